"""The report directory: ``report.md`` (for people), ``results.json`` and the plots."""

import warnings
from pathlib import Path

from ._levels import LEVEL_NAMES
from ._reference import describe, why_above
from ._results import FORWARD, FORWARD_BACKWARD, save_results, workload
from ._serving import (ALIBI, CHECK_ROWS, DECODE, DECODE_GOAL, PADDED, PAGED, READ,
                       READ_ROW, VARLEN)
from ._summary import (above_reference, backward_peaks, configurations,
                       describe_configuration, dtype_baselines, dtype_configurations,
                       isa_cell, isa_summary, model_groups, naive_times, ran_by_n,
                       read_bandwidth, serving_call, serving_groups, serving_order,
                       speedup_over, timing_range, torch_points)
from ._workload import (DTYPES, FULL_CHECK_BYTES, GRADIENT_TOLERANCE,
                        NAIVE_BACKWARD_TEMPORARIES)

REPORT_FILE = "report.md"


def _bytes(value):
    """A size in the largest binary unit that keeps it at least 1: ``4 GiB``, ``256 MiB``.

    Examples
    --------
    >>> _bytes(2**32), _bytes(3 * 2**19), _bytes(96)
    ('4 GiB', '1.5 MiB', '96 B')
    """
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:,.3g} {unit}"
    return f"{value:g} B"


def _mib(value):
    if value is None:
        return "—"
    mib = value / 2**20
    return "<0.1" if mib < 0.1 else f"{mib:,.1f}"


def _number(value):
    """Three significant digits below 100, thousands separators above."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _timing_cells(point):
    spread = timing_range(point)
    fastest, slowest = (("—", "—") if spread is None else
                        (_number(spread[0] * 1e3), _number(spread[1] * 1e3)))
    calls = len(point["times_s"]) if point.get("times_s") else "—"
    return [_number(point["median_s"] * 1e3), fastest, slowest, str(calls)]


TABLE_COLUMNS = ("N", "backend", "ISA", "median ms", "min ms", "max ms", "calls", "GFLOP/s",
                 "% of matmul ref", "tokens/s", "peak MiB", "RSS MiB", "traced MiB",
                 "speedup vs naive", "max abs err")
"""The columns of the forward tables, in order."""

TEXT_COLUMNS = ("backend", "implementation", "ISA", "dtype", "call", "layout")
"""Columns aligned left."""


def _lead_with_isa(point):
    return [str(point["n"]), point["backend"], isa_cell(point)]


def _level_rank(point):
    """Where a point's ``--isa`` level sorts: the one chosen at import first, then lowest first."""
    level = point.get("isa_requested")
    return -1 if level is None else (LEVEL_NAMES.index(level) if level in LEVEL_NAMES
                                     else len(LEVEL_NAMES))


def _table(points, reference):
    naive = naive_times(points)
    reference_gflops = reference.get("gflops")

    def cells(p):
        share = (f"{100 * p['gflops'] / reference_gflops:.0f}%"
                 if reference_gflops and p["dtype"] == reference.get("dtype") else "—")
        speedup = (f"{naive[p['n']] / p['median_s']:.3g}×"
                   if p["n"] in naive and p["backend"] != "naive" else "—")
        error = "—" if p.get("max_abs_err") is None else f"{p['max_abs_err']:.1e}"
        return [*_lead_with_isa(p), *_timing_cells(p), _number(p["gflops"]), share,
                f"{p['tokens_per_s']:,.0f}", _mib(p["peak_bytes"]), _mib(p.get("rss_bytes")),
                _mib(p.get("traced_bytes")), speedup, error]

    return _point_table(TABLE_COLUMNS, points, "naive", cells, _lead_with_isa, _level_rank)


def _point_table(columns, points, first, cells, lead=None, order=None):
    """Markdown rows: a header of ``columns`` (those of :data:`TEXT_COLUMNS` left-aligned),
    then one row per point by N, backend ``first`` leading, then by ``order(point)``;
    ``cells(point)`` fills a measured point's row, a failed one gets its leading cells
    (``lead(point)``, default N and backend), then its status and reason."""
    lead = lead or (lambda p: [str(p["n"]), p["backend"]])
    rows = ["| " + " | ".join(columns) + " |",
            "|" + "|".join("---" if c in TEXT_COLUMNS else "---:" for c in columns) + "|"]
    for p in sorted(points, key=lambda p: (p["n"], p["backend"] != first, p["backend"],
                                           order(p) if order else 0)):
        if p["status"] != "ok":
            head = lead(p) + [f"{p['status']}: {p['reason']}"]
            rows.append("| " + " | ".join(head) + " |" + " |" * (len(columns) - len(head)))
        else:
            rows.append("| " + " | ".join(cells(p)) + " |")
    return rows


BACKWARD_COLUMNS = ("N", "backend", "ISA", "median ms", "min ms", "max ms", "calls",
                    "GFLOP/s", "speedup vs torch", "bwd peak MiB", "bwd RSS MiB",
                    "bwd traced MiB", "max grad err")
"""The columns of the forward + backward tables, in order."""


def _speedup_cell(torch, point):
    if point["backend"] == "torch":
        return "1×" if torch else "—"
    return _ratio_cell(torch, point)


def _ratio_cell(baseline, point):
    """``baseline``'s median over ``point``'s, and its range: ``2× (1.5–2.67)``; 1× for the
    baseline itself, — without one."""
    if baseline is point:
        return "1×"
    ratio = speedup_over(baseline, point)
    if ratio is None:
        return "—"
    median, low, high = ratio
    return f"{median:.3g}× ({low:.3g}–{high:.3g})"


def _gradient_error_cell(point):
    if point.get("max_grad_err") is None:
        return "—"
    heads = point.get("checked_heads")
    partial = f" ({heads}/{point['heads']} heads)" if heads and heads < point["heads"] else ""
    return f"{point['max_grad_err']:.1e}{partial}"


def _backward_table(points):
    torch = torch_points(points)

    def cells(p):
        return [*_lead_with_isa(p), *_timing_cells(p), _number(p["gflops"]),
                _speedup_cell(torch.get(p["n"]), p), _mib(p["peak_bytes"]),
                _mib(p.get("rss_bytes")), _mib(p.get("traced_bytes")), _gradient_error_cell(p)]

    return _point_table(BACKWARD_COLUMNS, points, "torch", cells, _lead_with_isa, _level_rank)


DTYPE_COLUMNS = ("N", "backend", "ISA", "dtype", "median ms", "min ms", "max ms", "calls",
                 "GFLOP/s", "vs float32", "vs torch")
"""The columns of the dtype comparison tables, in order."""


def _dtype_table(points, dtypes=DTYPES):
    """The dtype comparison of one configuration's points, rows in the order of ``dtypes``."""
    baselines = dtype_baselines(points)

    def lead(p):
        return [*_lead_with_isa(p), p["dtype"]]

    def cells(p):
        float32, torch = baselines[id(p)]
        return [*lead(p), *_timing_cells(p), _number(p["gflops"]), _ratio_cell(float32, p),
                _ratio_cell(torch, p)]

    def order(p):
        rank = dtypes.index(p["dtype"]) if p["dtype"] in dtypes else len(dtypes)
        return _level_rank(p), rank

    return _point_table(DTYPE_COLUMNS, points, "naive", cells, lead, order)


def _dtype_title(config):
    mask = "causal" if config["causal"] else "no mask"
    return (f"B={config['batch']}, H={config['heads']}, D={config['head_dim']}, {mask}, "
            f"{config['threads']} threads")


def _dtype_lines(results):
    """The "Dtypes" sections: each workload that ran in several dtypes, a table per shape."""
    lines = []
    for kind, heading in ((FORWARD, "Dtypes"), (FORWARD_BACKWARD, "Dtypes: forward + backward")):
        groups = dtype_configurations(results, kind)
        if not groups:
            continue
        lines += [f"## {heading}", "",
                  "Each N and mask is timed in every dtype, one after the other, torch's "
                  "SDPA on tensors of the same dtype among them. float16 and bfloat16 are "
                  "stored in 16 bits and computed in float32 (accumulation, softmax; "
                  "fastattn and torch alike); GFLOP/s counts the same work in every dtype. "
                  "**vs float32** is the same backend's float32 median over this median, at "
                  "the same N and `--isa` level (above 1×: faster than its float32); **vs "
                  "torch** is torch's median in the same dtype over this median; in "
                  "brackets, the least and most that a pair of timed calls gives (where "
                  "the range includes the other side of 1×, the difference may be noise). "
                  "**ISA** is the instruction-set level the point ran at: fastattn's Cython "
                  "level (`fastattn._isa`), torch's ATen CPU capability, numba's LLVM host "
                  "CPU.", ""]
        for config, points in groups:
            lines += [f"### {_dtype_title(config)}", ""]
            lines += _dtype_table(points, results["settings"].get("dtypes") or DTYPES)
            lines.append("")
    return lines


def _backward_lines(results):
    """The "Forward + backward" section: what it times, the peak memory, one table per shape."""
    groups = configurations(results, FORWARD_BACKWARD)
    if not groups:
        return []
    check_n = int((FULL_CHECK_BYTES / (NAIVE_BACKWARD_TEMPORARIES * 8)) ** 0.5)
    lines = ["## Forward + backward", "",
             "One training step per call: fastattn's `attention(q, k, v, causal=..., "
             "return_lse=True)` then `attention_backward(dout, q, k, v, out, lse, "
             "causal=...)`, against torch's `scaled_dot_product_attention(q, k, v, "
             "is_causal=...)` on tensors with `requires_grad`, then `.backward(dout)`, "
             "measured in the same run, point after point. B × H = 1 shows how a backward "
             "keeps the cores busy on a single head (torch parallelises its backward over "
             "batch × heads). Speedup vs torch is torch's median over the backend's (above "
             "1×: faster than torch); in brackets, the least and most that a pair of timed "
             "calls gives (torch's fastest over the backend's slowest, and the other way "
             "round): where the range includes 1×, the difference may be noise. GFLOP/s "
             "counts 14·B·H·N²·D per step (the forward's two products and the backward's "
             "five; halved when causal). The bwd peak is that of one backward call, in a "
             "fresh process after its forward (the forward's out and lse, like the inputs, "
             "are not counted; the three gradients are); torch's allocations are seen by "
             "the RSS only. The max grad err is the largest difference of dq, dk or dv from "
             "the naive float64 gradient, relative to that gradient's largest entry "
             f"(tolerance {_tolerances(GRADIENT_TOLERANCE, groups)}), on the "
             f"heads whose naive gradient fits in {FULL_CHECK_BYTES / 2**20:.0f} MiB: all "
             f"of them at small N, fewer as N grows, none above N ≈ {check_n} (—).", ""]
    peaks = backward_peaks(results)
    several = len({config["dtype"] for config, _ in groups}) > 1
    if peaks:
        lines += ["**Peak memory of the backward** at the largest N:", ""]
        lines += [f"- {config['dtype'] + ', ' if several else ''}{_shape_title(config)}, "
                  f"N = {n}: " + ", ".join(
            f"{backend} {_mib(size)} MiB" for backend, size in sorted(found.items()))
            for config, n, found in peaks]
        lines.append("")
    for config, points in groups:
        lines += [f"### {describe_configuration(config)}", ""]
        lines += _backward_table(points)
        lines.append("")
    return lines


def _tolerances(table, groups):
    """``0.0001`` for one dtype, ``0.0001 in float32, 0.03 in bfloat16`` for several."""
    dtypes = list(dict.fromkeys(config["dtype"] for config, _ in groups))
    if len(dtypes) == 1:
        return f"{table.get(dtypes[0], 0):g}"
    return ", ".join(f"{table.get(dtype, 0):g} in {dtype}" for dtype in dtypes)


MODEL_COLUMNS = ("N", "implementation", "median ms", "min ms", "max ms", "calls", "tokens/s",
                 "tokens/s min–max", "speedup vs sdpa", "peak MiB", "RSS MiB", "traced MiB")
"""The columns of the model tables, in order."""

MODEL_TITLES = {
    "llama-prefill": "Tiny Llama: prefill of N tokens",
    "llama-decode": "Tiny Llama: {decoded} tokens decoded after an N-token prompt",
    "minilm-encode": "MiniLM (all-MiniLM-L6-v2): encode of N tokens",
}


def _model_table(points):
    sdpa = ran_by_n(points, "sdpa")

    def cells(p):
        spread = timing_range(p)
        tokens = p.get("tokens", p["n"])
        rate_range = ("—" if spread is None else
                      f"{tokens / spread[1]:,.0f}–{tokens / spread[0]:,.0f}")
        if p["backend"] == "sdpa":
            speedup = "1×" if sdpa.get(p["n"]) else "—"
        else:
            speedup = _speedup_cell(sdpa.get(p["n"]), p)
        return [str(p["n"]), p["backend"], *_timing_cells(p), f"{p['tokens_per_s']:,.0f}",
                rate_range, speedup, _mib(p["peak_bytes"]), _mib(p.get("rss_bytes")),
                _mib(p.get("traced_bytes"))]

    return _point_table(MODEL_COLUMNS, points, "fastattn", cells)


def _model_lines(results):
    """The "Models" section: what it times, then one table per model workload."""
    from ._models import DECODED, LLAMA

    groups = model_groups(results)
    if not groups:
        return []
    levels = isa_summary([p for _, points in groups for p in points])
    llama = (f"hidden {LLAMA['hidden_size']}, {LLAMA['num_hidden_layers']} layers, "
             f"{LLAMA['num_attention_heads']} heads, {LLAMA['num_key_value_heads']} "
             f"key/value heads, vocabulary {LLAMA['vocab_size']}")
    lines = ["## Models", "",
             "Whole models in transformers, each point in a fresh process, with "
             "`attn_implementation` \"fastattn\" (`fastattn.hf.register()`), \"sdpa\" "
             "(torch's scaled_dot_product_attention) and \"eager\" (transformers' own "
             f"matmul and softmax). The tiny Llama has random weights ({llama}): its "
             "prefill is one forward over N prompt tokens without a cache; its decode "
             f"is `generate(..., max_new_tokens={DECODED}, min_new_tokens={DECODED}, "
             f"do_sample=False)` after an N-token prompt, prefill included, tokens/s "
             f"counting the {DECODED} new tokens. MiniLM is the packaged "
             "all-MiniLM-L6-v2 (BERT, 12 heads of 32; its positions stop at 512 tokens), "
             "one forward over N tokens. Tokens/s is tokens over the median time; its "
             "range, and the speedup's in brackets, come from the fastest and slowest "
             "calls (where a range includes 1×, the difference may be noise). Speedup "
             "vs sdpa is sdpa's median over the implementation's. Peak MiB is that of "
             "the first full-size call (the weights are not counted; torch's "
             "allocations are seen by the RSS only)."
             + (f" Instruction-set levels: {levels}." if levels else ""), ""]
    for workload, points in groups:
        lines += [f"### {MODEL_TITLES[workload].format(decoded=DECODED)}", ""]
        lines += _model_table(points)
        lines.append("")
    return lines


DECODE_COLUMNS = ("call", "backend", "ISA", "median ms", "min ms", "max ms", "calls", "GB/s",
                  "% of read bandwidth", "x torch", "peak MiB", "max abs err")
"""The columns of the serving decode table, in order."""

VARLEN_COLUMNS = ("layout", "backend", "ISA", "median ms", "min ms", "max ms", "calls",
                  "tokens/s", "x padded fastattn", "x torch padded", "peak MiB",
                  "max abs err")
"""The columns of the serving varlen table, in order."""


def _serving_rows(columns, points, cells):
    """Markdown rows of serving ``points``: each fastattn backend's calls together (cython,
    then numba), torch's last; ``cells(point)`` fills a measured row after its call,
    backend and ISA, a point that did not run gets its status and reason."""
    rows = ["| " + " | ".join(columns) + " |",
            "|" + "|".join("---" if c in TEXT_COLUMNS else "---:" for c in columns) + "|"]
    for p in sorted(points, key=serving_order):
        lead = [serving_call(p), p["backend"], isa_cell(p)]
        if p["status"] != "ok":
            head = lead + [f"{p['status']}: {p['reason']}"]
            rows.append("| " + " | ".join(head) + " |" + " |" * (len(columns) - len(head)))
        else:
            rows.append("| " + " | ".join(lead + cells(p)) + " |")
    return rows


def _error_cell(point):
    return "—" if point.get("max_abs_err") is None else f"{point['max_abs_err']:.1e}"


def _share(rate, read):
    return None if not (rate and read) else rate / read["gbytes_per_s"]


def _decode_table(points, read):
    torch = next((p for p in points if p["backend"] == "torch" and p["status"] == "ok"), None)

    def cells(p):
        share = _share(p.get("gbytes_per_s"), read)
        return [*_timing_cells(p), f"{p['gbytes_per_s']:.3g}",
                "—" if share is None else f"{100 * share:.0f}%",
                _ratio_cell(torch, p) if torch else "—", _mib(p["peak_bytes"]),
                _error_cell(p)]

    return _serving_rows(DECODE_COLUMNS, points, cells)


def _varlen_table(points):
    padded = {p["backend"]: p for p in points if p["workload"] == PADDED and p["status"] == "ok"}
    torch = padded.get("torch")

    def cells(p):
        own = padded.get(p["backend"]) if p["backend"] != "torch" else None
        return [*_timing_cells(p), f"{p['tokens_per_s']:,.0f}",
                _ratio_cell(own, p) if own else "—", _ratio_cell(torch, p) if torch else "—",
                _mib(p["peak_bytes"]), _error_cell(p)]

    return _serving_rows(VARLEN_COLUMNS, points, cells)


def _read_lines(probe):
    """The read bandwidth paragraph of the "Serving" section."""
    if probe["status"] != "ok":
        return [f"**Read bandwidth**: not measured ({probe['status']}: {probe['reason']}): "
                "the decode table has no share of it.", ""]
    method = probe.get("read_method")
    other_rates = [f"`{name}` {rate:.3g} GB/s" for name, rate in
                   (probe.get("read_gbytes_per_s_by_method") or {}).items() if name != method]
    others = "; ".join(other_rates)
    spread = timing_range(probe)
    span = "" if spread is None else (
        f", slowest–fastest {probe['bytes_read'] / spread[1] / 1e9:.3g}–"
        f"{probe['bytes_read'] / spread[0] / 1e9:.3g} GB/s")
    threads = probe["threads"]
    return [f"**Read bandwidth**: **{probe['gbytes_per_s']:.3g} GB/s**: {threads} "
            f"thread{'s' if threads != 1 else ''}, each reading its part of a "
            f"{_bytes(probe['bytes_read'])} float32 array with `{method}` (median "
            f"of {len(probe.get('times_s') or ())} reads{span}; "
            + (f"the other way{'s' if len(other_rates) > 1 else ''}, {others}" if others
               else "no other way measured")
            + f"). `gemv` is `np.dot` of its rows of {READ_ROW} values with a vector of "
            "ones, one pass at memory speed; `add.reduce` is NumPy's pairwise SIMD sum, "
            "which some cores cannot run at memory speed; `c-stream` is a C sum in eight "
            "vector accumulators on OpenMP threads (the Cython build's `stream_read`): "
            "the fastest counts. Measured in "
            "this run, before the decode points; GB/s are 10⁹ bytes per second.", ""]


def _decode_lines(points, read):
    first = points[0]
    lines = [f"### Decoding: Lq = 1, Lk = {first['n']}, Hq = {first['heads']}, "
             f"Hk = {first['kv_heads']}, D = {first['head_dim']}, float32", "",
             "One query token over the whole KV cache: `attention(q, k, v, "
             "causal=\"lower_right\")` with q (1, Hq, 1, D) and k, v (1, Hk, Lk, D); "
             "`paged_attention` on the same tokens in pages of "
             f"{_page_size(points)}, the cache's blocks shuffled (a random block table); "
             "torch's `scaled_dot_product_attention(q, k, v, enable_gqa=True)` (no mask: "
             "the last query sees every key). **GB/s** is the bytes of K and V "
             f"({_bytes(first['bytes_read'])}) over the median time, **% of read "
             "bandwidth** its share of the bandwidth above, **x torch** torch's median over "
             "this one (in brackets the range a pair of timed calls gives). The max abs err "
             "is against the naive float64 reference.", ""]
    lines += _decode_table(points, read)
    lines += ["", _goal_line(points, read), ""]
    return lines


def _page_size(points):
    return next((p["page_size"] for p in points if p.get("page_size")), "—")


def _goal_line(points, read):
    """Whether fastattn's decoding reads K and V at :data:`DECODE_GOAL` of the bandwidth."""
    goal = (f"**Decoding goal**, K and V read at ≥ {100 * DECODE_GOAL:.0f} % of the read "
            "bandwidth")
    shares = [(p, _share(p.get("gbytes_per_s"), read)) for p in points
              if p["backend"] != "torch" and p["status"] == "ok"]
    shares = sorted(((p, s) for p, s in shares if s is not None), key=lambda item: -item[1])
    if not shares:
        return goal + ": not measured."
    named = [f"{p['backend']} {serving_call(p)} ({100 * s:.0f} %)" for p, s in shares]
    met = [name for name, (_, s) in zip(named, shares) if s >= DECODE_GOAL]
    if not met:
        return goal + ": **not met**: " + ", ".join(named) + "."
    below = named[len(met):]
    return (goal + ": **met** by " + ", ".join(met) + "."
            + (" Below it: " + ", ".join(below) + "." if below else ""))


def _varlen_lines(points):
    first = points[0]
    lengths = first.get("seq_lens") or []
    real, padded = sum(lengths), len(lengths) * first.get("padded_len", 0)
    lines = [f"### Varlen: {len(lengths)} sequences, causal, Hq = Hk = {first['heads']}, "
             f"D = {first['head_dim']}, float32", "",
             f"Lengths {', '.join(map(str, lengths))}: {real:,} real tokens; padded to "
             f"the longest ({first.get('padded_len')}), {padded:,} tokens, "
             f"{100 * real / max(padded, 1):.0f} % of them real. "
             "`varlen_attention(q, k, v, cu_seqlens, cu_seqlens, causal=True)` runs the "
             "packed batch; the padded batch (B, H, longest, D), made before the timing, "
             "runs through `attention(q, k, v, mask=keys, causal=True)` with a bool mask "
             "of the real keys, (B, 1, 1, longest), and through torch's "
             "`scaled_dot_product_attention` with a bool mask (B, 1, longest, longest) "
             "of causal and real keys (SDPA takes no mask with `is_causal`). **tokens/s** "
             "counts the real tokens; **x padded fastattn** is the same backend's padded "
             "median over this one, **x torch padded** torch's; in brackets the range a "
             "pair of timed calls gives. The max abs err is that of the last "
             f"{CHECK_ROWS} query rows of each sequence against a float64 formula.", ""]
    lines += _varlen_table(points)
    lines.append("")
    return lines


def _alibi_line(point):
    head = (f"- {point['backend']}, N = {point['n']}, B = {point['batch']}, "
            f"H = {point['heads']}, D = {point['head_dim']}, causal, float32: ")
    if point["status"] != "ok":
        return head + f"{point['status']}: {point['reason']}"
    spread = timing_range(point)
    span = "" if spread is None else \
        f" ({_number(spread[0] * 1e3)}–{_number(spread[1] * 1e3)})"
    output = point["heads"] * point["n"] * point["head_dim"] * 4
    return (head + f"**{_number(point['median_s'] * 1e3)} ms** per call{span}, peak memory "
            f"**{_mib(point['peak_bytes'])} MiB** (the output alone is {_mib(output)} MiB); "
            f"an additive float32 bias of Lq × Lk would need "
            f"{_bytes(point['bias_bytes_per_head'])} per head, "
            f"{_bytes(point['bias_bytes'])} for the {point['heads']} heads "
            f"(stated, never allocated); max abs err {_error_cell(point)}.")


def _alibi_lines(points):
    return ([f"### ALiBi at N = {points[0]['n']}", "",
             "`attention(q, k, v, causal=True, alibi_slopes=slopes)`, slopes "
             "2^(−8(h+1)/H), the bias computed inside the kernels: peak memory of the "
             "first full-size call in a fresh process (the inputs not counted, the output "
             f"counted); the max abs err is that of the first and last {CHECK_ROWS} query "
             "rows against a float64 formula.", ""]
            + [_alibi_line(p) for p in points] + [""])


def _serving_lines(results):
    """The "Serving" section: the read bandwidth, decoding, varlen and ALiBi."""
    groups = serving_groups(results)
    if not groups:
        return []
    everything = [p for found in groups.values() for p in found]
    levels = isa_summary(everything)
    threads = everything[0]["threads"]
    lines = ["## Serving", "",
             f"Serving workloads (`--serving`), float32, {threads} thread"
             f"{'s' if threads != 1 else ''}, each point in a fresh process, next to what "
             "it is compared with; times as above (median, fastest and slowest of the "
             "timed calls)." + (f" Instruction-set levels: {levels}." if levels else ""),
             ""]
    if groups.get(READ):
        lines += _read_lines(groups[READ][0])
    decode = groups.get(DECODE, []) + groups.get(PAGED, [])
    if decode:
        lines += _decode_lines(decode, read_bandwidth(results))
    batch = groups.get(VARLEN, []) + groups.get(PADDED, [])
    if batch:
        lines += _varlen_lines(batch)
    if groups.get(ALIBI):
        lines += _alibi_lines(groups[ALIBI])
    return lines


def _shape_title(config):
    return (f"B={config['batch']}, H={config['heads']}, "
            f"{'causal' if config['causal'] else 'no mask'}")


def _reference_lines(results):
    """The report's paragraphs on the matmul reference, and on who passes it and why."""
    reference = results.get("reference") or {}
    if not reference.get("gflops"):
        if reference:
            return ["**Matmul reference**: not measured ("
                    + "; ".join(f"{m['library']}: {m.get('reason')}"
                                for m in reference.get("libraries", ())) + ").", ""]
        return []
    lines = ["**Matmul reference**: " + describe(reference) + ". \"% of matmul ref\" below is "
             "relative to it: the best that the installed BLAS libraries reach on one "
             "large matrix product here, a yardstick for attention's two products, not a "
             "bound on the CPU.", ""]
    above = above_reference(results)
    if above:
        ran = {}
        for p in results["points"]:
            if (p["status"] == "ok" and workload(p) == FORWARD
                    and p["dtype"] == reference.get("dtype", p["dtype"])):
                ran[p["backend"]] = ran.get(p["backend"], 0) + 1
        who = "; ".join(
            f"{backend} at {len(found)} of {ran[backend]} points (up to "
            f"{100 * max(p['gflops'] for p in found) / reference['gflops']:.0f}%)"
            for backend, found in above.items())
        reasons = why_above(reference, results["machine"], set(above))
        lines += [f"**Above the reference**: {who}. Why, on this machine: "
                  + "; ".join(reasons) + ". (On a busy machine the reference is noisy too: "
                  "check the min and max columns before trusting a few percent.)", ""]
        if any("OPENBLAS_CORETYPE" in reason for reason in reasons):
            lines += ["Unset `OPENBLAS_CORETYPE` (`env -u OPENBLAS_CORETYPE fastattn bench "
                      "...`) to let OpenBLAS choose its kernels for this CPU.", ""]
    return lines


def _level_rows(machine, settings):
    """The machine table's row on fastattn's instruction-set levels (none in old results)."""
    levels = machine.get("isa")
    if not levels:
        return []
    supported = ", ".join(levels.get("supported") or ()) or "none"
    text = (f"{levels.get('active') or 'none (no Cython backend)'} for the Cython kernels, "
            f"chosen at import (this build and CPU run: {supported})")
    if settings.get("isa_levels"):
        text += f"; `--isa` also times them at {', '.join(settings['isa_levels'])}"
    return [f"| instruction-set level | {text} |"]


def render_markdown(results, plots=()):
    """The text of ``report.md`` for ``results``.

    Parameters
    ----------
    results : dict
        As returned by :func:`fastattn.bench.run_sweep` or loaded from results.json.
    plots : sequence of (str, str)
        ``(title, file name)`` of the plots to show.

    Returns
    -------
    str
    """
    machine, settings = results["machine"], results["settings"]
    reference = results.get("reference") or {}
    simd = ", ".join(machine.get("cpu_simd") or ()) or "unknown"
    lines = ["# fastattn benchmark report", "",
             f"Created {results['created']}"
             + (f" by `{' '.join(results['command'])}`" if results.get("command") else "")
             + ".", "", "## Machine", "", "| | |", "|---|---|",
             f"| CPU | {machine['cpu']} |",
             f"| vector instructions | {simd} |",
             *_level_rows(machine, settings),
             f"| cores | {machine['available_cores']} available "
             f"({machine['logical_cpus']} logical) |",
             f"| threads used | {settings['threads']} |",
             f"| memory | {machine['memory_gib']} GiB; naive budget "
             f"{settings['memory_budget_gib']:g} GiB |",
             f"| platform | {machine['platform']}, Python {machine['python']} |",
             "| versions | " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()
                                         if v) + " |",
             "| BLAS | " + ("; ".join(machine["blas"]) or "unknown") + " |",
             "| backends | " + "; ".join(f"{k}: {v}" for k, v in machine["backends"].items())
             + " |", ""]
    lines += _reference_lines(results)
    lines += [f"Times are medians of at least {settings['repeats']} timed calls and at least "
              f"{settings.get('min_time_s', 0):g} s of them, after full-size warm-up calls "
              f"(timing stops after {settings['time_budget_s']:g} s per point); min and max "
              "are the fastest and slowest of those calls, and calls how many there were. "
              "Where the min–max ranges of two points overlap, their difference may be "
              "noise. GFLOP/s counts 4·B·H·N²·D (halved when causal). Peak MiB is the "
              "larger of the RSS rise and the tracemalloc peak of one call, measured in a "
              "fresh process; the inputs are not counted, the output is. The max abs error "
              "is against the naive float64 reference, and naive's own against an "
              "independent float64 formula (float16 and bfloat16 results may differ by "
              "their rounding too: the tolerance grows with the value). The ISA column "
              "names the instruction-set level each point ran at (fastattn's Cython "
              "level, torch's ATen CPU capability, numba's LLVM host CPU); \"% of matmul "
              "ref\" is given in the reference's dtype only.", ""]
    for config, points in configurations(results):
        lines += [f"## {describe_configuration(config)}", ""]
        lines += _table(points, reference)
        lines.append("")
    lines += _dtype_lines(results)
    lines += _backward_lines(results)
    lines += _model_lines(results)
    lines += _serving_lines(results)
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{title}]({name})\n" for title, name in plots]
    return "\n".join(lines).rstrip() + "\n"


def write_report(results, directory, plots=True):
    """Write ``results.json``, the plots and ``report.md`` into ``directory``.

    Parameters
    ----------
    results : dict
    directory : str or Path
    plots : bool, default True
        Draw the PNG plots (needs matplotlib; without it a warning is given and
        the report is written without plots).

    Returns
    -------
    list of Path
        The files written.
    """
    directory = Path(directory)
    written = [save_results(results, directory)]
    drawn = []
    if plots:
        try:
            from ._plots import draw_plots
        except ImportError as error:
            warnings.warn(f"no plots: {error}", stacklevel=2)
        else:
            drawn = draw_plots(results, directory)
            written += [directory / name for _, name in drawn]
    path = directory / REPORT_FILE
    path.write_text(render_markdown(results, drawn))
    written.append(path)
    return written
