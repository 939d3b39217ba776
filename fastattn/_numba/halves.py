"""Half precision in the Numba kernels: float16 and bfloat16 read and written as their bits.

Numba has no float16 arrays on the CPU and does not know ml_dtypes' bfloat16, so a half
array reaches the kernels as a view of its 16-bit words (:func:`as_kernel_array`):
float16 as ``int16``, bfloat16 as ``uint16``.  The two integer types tell the formats
apart when Numba compiles, so the float32 and float64 kernels stay exactly what they
were.  The kernels convert a tile at a time: :func:`load` for one element,
:func:`read_row` for a row, into float32 scratch; they compute in float32 and
:func:`store` rounds each output element to nearest even.  The conversions are
bit-exact with NumPy's ``astype(np.float16)`` and ml_dtypes' ``astype(bfloat16)``,
NaN included (float16 keeps the top of a NaN's payload, as NumPy does; bfloat16 gives
the quiet NaN of the same sign, as ml_dtypes does); overflow rounds to infinity and
float16 subnormals are exact.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .._half import FLOAT16, is_bfloat16
from .rowops import JIT

F16_BITS = np.dtype(np.int16)
"""How a float16 array reaches the kernels."""

BF16_BITS = np.dtype(np.uint16)
"""How a bfloat16 array reaches the kernels."""


def as_kernel_array(array):
    """``array``, or for a half dtype a view of its bits that Numba can take (no copy)."""
    if array.dtype == FLOAT16:
        return array.view(F16_BITS)
    if is_bfloat16(array.dtype):
        return array.view(BF16_BITS)
    return array


# --------------------------------------------------------------------------- bit casts

@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bits are the low 32 bits of the integer ``bits``."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        word = builder.trunc(args[0], ir.IntType(32)) if bits.bitwidth > 32 else \
            builder.zext(args[0], ir.IntType(32)) if bits.bitwidth < 32 else args[0]
        return builder.bitcast(word, ir.FloatType())
    return types.float32(bits), codegen


@intrinsic
def _bits_of_float32(typingctx, value):
    """The bits of the float32 ``value``, as an int64 in ``0 .. 2**32 - 1``."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.zext(builder.bitcast(args[0], ir.IntType(32)), ir.IntType(64))
    return types.int64(value), codegen


# --------------------------------------------------------------------------- conversions

@njit(**JIT)
def bf16_to_f32(bits):
    """A bfloat16 (its 16 bits) as float32: the top half of the float32's bits."""
    return _float32_from_bits(np.int64(bits) << 16)


@njit(**JIT)
def f16_to_f32(bits):
    """A float16 (its 16 bits) as float32, exactly (subnormals, infinities and NaN included)."""
    h = np.int64(bits) & 0xFFFF
    magnitude = (h & 0x7FFF) << 13  # exponent and mantissa at float32's places
    exponent = magnitude & 0x0F800000
    if exponent == 0x0F800000:  # infinity or NaN: the top exponent
        word = magnitude + 0x70000000
    elif exponent == 0:  # zero or subnormal: 2**-14 * 0.mantissa, renormalised by a subtraction
        word = _bits_of_float32(_float32_from_bits(magnitude + 0x38800000)
                                - _float32_from_bits(0x38800000))
    else:  # rebias the exponent: 127 - 15
        word = magnitude + 0x38000000
    return _float32_from_bits(word | ((h & 0x8000) << 16))


@njit(**JIT)
def f32_to_bf16(value):
    """The bits of ``value`` (float32) rounded to bfloat16, to nearest even."""
    word = _bits_of_float32(value)
    if (word & 0x7FFFFFFF) > 0x7F800000:  # NaN: the quiet NaN of its sign
        return ((word >> 16) & 0x8000) | 0x7FC0
    return (word + 0x7FFF + ((word >> 16) & 1)) >> 16


@njit(**JIT)
def f32_to_f16(value):
    """The bits of ``value`` (float32) rounded to float16, to nearest even."""
    word = _bits_of_float32(value)
    sign = (word >> 16) & 0x8000
    magnitude = word & 0x7FFFFFFF
    if magnitude >= 0x47800000:  # 2**16 and above: infinity, or NaN keeping its payload's top
        if magnitude <= 0x7F800000:
            return sign | 0x7C00
        payload = (magnitude & 0x7FFFFF) >> 13
        return sign | 0x7C00 | (payload if payload else 1)
    if magnitude < 0x38800000:  # below 2**-14: a subnormal or zero; the float add rounds it
        rounded = _float32_from_bits(magnitude) + np.float32(0.5)
        return sign | (_bits_of_float32(rounded) - 0x3F000000)
    odd = (magnitude >> 13) & 1
    return sign | ((magnitude - 0x38000000 + 0xFFF + odd) >> 13)


# --------------------------------------------------------------------------- element access

def load(x):
    """An element of a kernel array as a number to compute with (halves: float32)."""
    raise NotImplementedError  # only callable from jitted code, through the overload


@overload(load, jit_options=JIT)
def _load_typed(x):
    if x == types.uint16:
        return lambda x: bf16_to_f32(x)
    if x == types.int16:
        return lambda x: f16_to_f32(x)
    return lambda x: x


def store(buffer, index, value):
    """``buffer[index] = value``, rounded to the buffer's dtype (halves: through float32)."""
    raise NotImplementedError  # only callable from jitted code, through the overload


@overload(store, jit_options=JIT)
def _store_typed(buffer, index, value):
    if buffer.dtype == types.uint16:
        def store_bf16(buffer, index, value):
            buffer[index] = np.uint16(f32_to_bf16(np.float32(value)))
        return store_bf16
    if buffer.dtype == types.int16:
        def store_f16(buffer, index, value):
            buffer[index] = np.int16(f32_to_f16(np.float32(value)))
        return store_f16

    def store_native(buffer, index, value):
        buffer[index] = value
    return store_native


def read_row(x, start, dst):
    """``dst[:] = x[start:start + len(dst)]``, converting half elements to ``dst``'s dtype."""
    raise NotImplementedError  # only callable from jitted code, through the overload


@overload(read_row, jit_options=JIT)
def _read_row_typed(x, start, dst):
    if x.dtype == dst.dtype:
        def copy_row(x, start, dst):
            dst[:] = x[start:start + dst.shape[0]]
        return copy_row

    def convert_row(x, start, dst):
        for d in range(dst.shape[0]):
            dst[d] = load(x[start + d])
    return convert_row
