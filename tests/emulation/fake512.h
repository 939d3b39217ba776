#include <string.h>
#include <stdint.h>
#include <math.h>
typedef float f512 __attribute__((vector_size(64)));
typedef int32_t i512 __attribute__((vector_size(64)));
typedef uint16_t u512 __attribute__((vector_size(64)));
#define FK static inline __attribute__((always_inline))
FK void fk_mm512_storeu_ps(void *p, __m512 a) { memcpy(p, &a, 64); }
FK __m512 fk_mm512_loadu_ps(const void *p) { __m512 a; memcpy(&a, p, 64); return a; }
FK __m512i fk_mm512_loadu_si512(const void *p) { __m512i a; memcpy(&a, p, 64); return a; }
FK void fk_mm512_storeu_si512(void *p, __m512i a) { memcpy(p, &a, 64); }
FK __m512 fk_mm512_setzero_ps(void) { return (__m512){0}; }
FK __m512i fk_mm512_setzero_si512(void) { return (__m512i){0}; }
FK __m512 fk_mm512_set1_ps(float x) { return (__m512)((f512){0} + x); }
FK __m512i fk_mm512_set1_epi32(int x) { return (__m512i)((i512){0} + x); }
FK __m512 fk_mm512_mul_ps(__m512 a, __m512 b) { return a * b; }
FK __m512 fk_mm512_castsi512_ps(__m512i a) { return (__m512)a; }
FK __m512i fk_mm512_castps_si512(__m512 a) { return (__m512i)a; }
FK __m512 fk_mm512_cvtph_ps(__m256i h) {  /* hardware semantics: exact, NaN quieted */
    uint16_t x[16]; float y[16]; memcpy(x, &h, 32);
    for (int i = 0; i < 16; i++) {
        uint32_t s = (uint32_t)(x[i] & 0x8000) << 16, m = x[i] & 0x7fff, e = m & 0x7c00, b;
        if (e == 0x7c00) b = 0x7f800000 | (m & 0x3ff) << 13 | ((m & 0x3ff) ? 0x400000 : 0);
        else if (e == 0) { float f = ldexpf((float)m, -24); memcpy(&b, &f, 4); }
        else b = (m << 13) + (112u << 23);
        b |= s; memcpy(&y[i], &b, 4);
    }
    __m512 r; memcpy(&r, y, 64); return r;
}
FK __m512i fk_mm512_maskz_loadu_epi16(__mmask32 k, const void *p) {
    uint16_t y[32] = {0}; const uint16_t *x = p;
    for (int i = 0; i < 32; i++) if (k >> i & 1) y[i] = x[i];   /* masked-off lanes never read */
    __m512i r; memcpy(&r, y, 64); return r;
}
FK void fk_mm512_mask_storeu_epi16(void *p, __mmask32 k, __m512i a) {
    uint16_t y[32]; uint16_t *x = p; memcpy(y, &a, 64);
    for (int i = 0; i < 32; i++) if (k >> i & 1) x[i] = y[i];
}
FK void fk_mm512_mask_storeu_ps(void *p, __mmask16 k, __m512 a) {
    float y[16]; float *x = p; memcpy(y, &a, 64);
    for (int i = 0; i < 16; i++) if (k >> i & 1) x[i] = y[i];
}
FK __m512i fk_mm512_permutexvar_epi16(__m512i idx, __m512i a) {
    uint16_t ix[32], x[32], y[32]; memcpy(ix, &idx, 64); memcpy(x, &a, 64);
    for (int i = 0; i < 32; i++) y[i] = x[ix[i] & 31];
    __m512i r; memcpy(&r, y, 64); return r;
}
FK __m512i fk_mm512_permutex2var_epi16(__m512i a, __m512i idx, __m512i b) {
    uint16_t ix[32], x[64], y[32]; memcpy(ix, &idx, 64); memcpy(x, &a, 64); memcpy(x + 32, &b, 64);
    for (int i = 0; i < 32; i++) y[i] = x[ix[i] & 63];
    __m512i r; memcpy(&r, y, 64); return r;
}
/* SDM convert_fp32_to_bfloat16: denormal -> signed zero, NaN -> quieted upper half, else RNE */
FK uint16_t fk_bf16(float f) {
    uint32_t b; memcpy(&b, &f, 4);
    if ((b & 0x7f800000) == 0) return (uint16_t)((b >> 16) & 0x8000);
    if ((b & 0x7fffffff) > 0x7f800000) return (uint16_t)((b >> 16) | 0x40);
    return (uint16_t)((b + 0x7fff + ((b >> 16) & 1)) >> 16);
}
FK __m512bh fk_mm512_cvtne2ps_pbh(__m512 a, __m512 b) {   /* low half from b, high half from a */
    float x[16], y[16]; uint16_t o[32]; memcpy(x, &a, 64); memcpy(y, &b, 64);
    for (int i = 0; i < 16; i++) { o[i] = fk_bf16(y[i]); o[16 + i] = fk_bf16(x[i]); }
    __m512bh r; memcpy(&r, o, 64); return r;
}
/* SDM VDPBF16PS: DAZ on inputs, odd pair element first, each step one float32 rounding, FTZ */
FK float fk_daz(float f) { uint32_t b; memcpy(&b, &f, 4); if ((b & 0x7f800000) == 0) { b &= 0x80000000; memcpy(&f, &b, 4); } return f; }
FK __m512 fk_mm512_dpbf16_ps(__m512 src, __m512bh a, __m512bh b) {
    float s[16]; uint16_t x[32], y[32]; memcpy(s, &src, 64); memcpy(x, &a, 64); memcpy(y, &b, 64);
    for (int i = 0; i < 16; i++) {
        float a1 = fk_daz(fa_bf16_to_f32(x[2*i+1])), b1 = fk_daz(fa_bf16_to_f32(y[2*i+1]));
        float a0 = fk_daz(fa_bf16_to_f32(x[2*i])), b0 = fk_daz(fa_bf16_to_f32(y[2*i]));
        float t = (float)((double)fk_daz(s[i]) + (double)a1 * b1);   /* product exact in double */
        t = (float)((double)fk_daz(t) + (double)a0 * b0);
        s[i] = fk_daz(t);
    }
    __m512 r; memcpy(&r, s, 64); return r;
}
#undef _mm512_storeu_ps
#define _mm512_storeu_ps fk_mm512_storeu_ps
#undef _mm512_loadu_ps
#define _mm512_loadu_ps fk_mm512_loadu_ps
#undef _mm512_loadu_si512
#define _mm512_loadu_si512 fk_mm512_loadu_si512
#undef _mm512_storeu_si512
#define _mm512_storeu_si512 fk_mm512_storeu_si512
#undef _mm512_setzero_ps
#define _mm512_setzero_ps fk_mm512_setzero_ps
#undef _mm512_setzero_si512
#define _mm512_setzero_si512 fk_mm512_setzero_si512
#undef _mm512_set1_ps
#define _mm512_set1_ps fk_mm512_set1_ps
#undef _mm512_set1_epi32
#define _mm512_set1_epi32 fk_mm512_set1_epi32
#undef _mm512_mul_ps
#define _mm512_mul_ps fk_mm512_mul_ps
#undef _mm512_castsi512_ps
#define _mm512_castsi512_ps fk_mm512_castsi512_ps
#undef _mm512_castps_si512
#define _mm512_castps_si512 fk_mm512_castps_si512
#undef _mm512_cvtph_ps
#define _mm512_cvtph_ps fk_mm512_cvtph_ps
#undef _mm512_maskz_loadu_epi16
#define _mm512_maskz_loadu_epi16 fk_mm512_maskz_loadu_epi16
#undef _mm512_mask_storeu_epi16
#define _mm512_mask_storeu_epi16 fk_mm512_mask_storeu_epi16
#undef _mm512_mask_storeu_ps
#define _mm512_mask_storeu_ps fk_mm512_mask_storeu_ps
#undef _mm512_permutexvar_epi16
#define _mm512_permutexvar_epi16 fk_mm512_permutexvar_epi16
#undef _mm512_permutex2var_epi16
#define _mm512_permutex2var_epi16 fk_mm512_permutex2var_epi16
#undef _mm512_cvtne2ps_pbh
#define _mm512_cvtne2ps_pbh fk_mm512_cvtne2ps_pbh
#undef _mm512_dpbf16_ps
#define _mm512_dpbf16_ps fk_mm512_dpbf16_ps
FK __m512i fk_mm512_set1_epi16(short x) { typedef short s512 __attribute__((vector_size(64))); return (__m512i)((s512){0} + x); }
FK __m512i fk_mm512_add_epi16(__m512i a, __m512i b) { return (__m512i)((u512)a + (u512)b); }
#undef _mm512_set1_epi16
#define _mm512_set1_epi16 fk_mm512_set1_epi16
#undef _mm512_add_epi16
#define _mm512_add_epi16 fk_mm512_add_epi16
