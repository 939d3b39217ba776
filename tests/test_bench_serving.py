"""The serving section of the benchmark report (``fastattn bench --serving``), on tiny sizes.

The workloads of :mod:`fastattn.bench._serving` (the read probe, decoding contiguous and
paged, a packed batch against the same batch padded, ALiBi), the points they plan and
record, the "Serving" section of report.md, serving.png, results.json and ``fastattn
bench compare`` with and without the section.  No timing is judged here.
"""

import copy
import json

import numpy as np
import pytest

import fastattn
from fastattn._cli import build_parser, main
from fastattn.bench import SCHEMA_VERSION, compare_results, load_results, save_results
from fastattn.bench import _sweep
from fastattn.bench._compare import format_comparison, regressions
from fastattn.bench._point import measure
from fastattn.bench._report import DECODE_COLUMNS, VARLEN_COLUMNS, render_markdown, write_report
from fastattn.bench._serving import (ALIBI, DECODE, PADDED, PAGED, READ, VARLEN,
                                     alibi_inputs, alibi_slopes, check_batch, decode_inputs,
                                     pad_batch, paged_cache, prepare_serving, read_methods,
                                     reference_rows, serving_options, serving_points,
                                     unpad_batch, varlen_inputs, varlen_lengths)
from fastattn.bench._sweep import SweepConfig, plan_points, run_child, run_sweep
from fastattn.bench._workload import torch_available
from helpers import COMPILED_BACKENDS
from oracle import attention_oracle

TINY = {"read_bytes": 2**18, "decode_keys": 100, "decode_heads": 4, "decode_kv_heads": 2,
        "head_dim": 8, "page_size": 16, "varlen_sequences": 4, "varlen_min": 3,
        "varlen_max": 40, "varlen_heads": 2, "alibi_n": 70, "alibi_heads": 2}
"""Sizes of a few milliseconds: decode pages of 16 with a partial last page, a varlen
batch whose longest sequence spans several query blocks' worth of rows."""

needs_torch = pytest.mark.skipif(not torch_available(), reason="torch is not installed")


def _config(argv):
    from fastattn.bench._command import config_from_args

    return config_from_args(build_parser().parse_args(["bench", "--backends", "naive"] + argv))


# --- options, planning ---------------------------------------------------------------------

@pytest.mark.parametrize("option, serving, sizes, backward, reference", [
    ("no", False, (128, 256, 512, 1024, 2048), (512, 1024), 2048),
    ("yes", True, (128, 256, 512, 1024, 2048), (512, 1024), 2048),
    ("only", True, (), (), 0),
])
def test_serving_option(option, serving, sizes, backward, reference):
    config = _config(["--quick", "--serving", option])
    assert (config.serving, config.sizes, config.backward_sizes, config.reference_size) == \
        (serving, sizes, backward, reference)
    assert config.models == ()
    assert config.serving_setup() == (serving_options() if serving else None)


def test_serving_option_default_and_combinations(capsys):
    assert _config([]).serving is False
    both = _config(["--serving", "only", "--models", "only"])
    assert both.serving and both.models and both.sizes == () == both.backward_sizes
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bench", "--serving", "maybe"])
    assert exit_info.value.code == 2
    assert "--serving: invalid choice: 'maybe'" in capsys.readouterr().err


def test_serving_options_are_checked():
    with pytest.raises(ValueError, match="unknown decode_key "):
        serving_options({"decode_key": 1})
    with pytest.raises(ValueError, match="alibi_n must be positive integers"):
        serving_options({"alibi_n": 0})
    with pytest.raises(ValueError, match="varlen_min \\(90\\) is above varlen_max \\(80\\)"):
        serving_options({"varlen_min": 90, "varlen_max": 80})
    with pytest.raises(ValueError, match="decode_kv_heads \\(3\\) must divide"):
        serving_options({"decode_kv_heads": 3})


def test_varlen_lengths_are_fixed_log_uniform_draws():
    options = serving_options()
    lengths = varlen_lengths(options)
    assert lengths == varlen_lengths(serving_options())  # the same batch in every process
    assert len(lengths) == 16 and min(lengths) >= 64 and max(lengths) <= 2048
    many = varlen_lengths(serving_options({"varlen_sequences": 4000}))
    # log-uniform: as many below the geometric mean (362) as above, and a quarter per octave
    # pair; a uniform draw would put only 14 % below 362.
    assert 0.45 < np.mean(np.array(many) < 362) < 0.55
    assert varlen_lengths(serving_options({"varlen_seed": 1})) != lengths


def test_plan_puts_each_call_next_to_its_comparison():
    points = serving_points(serving_options(), ("naive", "numba", "cython", "torch"), 2)
    assert [(p["workload"], p["backend"]) for p in points] == [
        (READ, "numpy"), (DECODE, "numba"), (PAGED, "numba"), (DECODE, "cython"),
        (PAGED, "cython"), (DECODE, "torch"), (VARLEN, "numba"), (PADDED, "numba"),
        (VARLEN, "cython"), (PADDED, "cython"), (PADDED, "torch"), (ALIBI, "cython")]
    read, decode = points[0], points[3]
    assert read["n"] == read["bytes_read"] == 2**30 and read["flops"] is None
    assert (decode["n"], decode["heads"], decode["kv_heads"], decode["head_dim"]) == \
        (65536, 32, 8, 64)
    assert decode["bytes_read"] == 2 * 8 * 65536 * 64 * 4  # K and V, float32
    assert decode["flops"] == 4 * 32 * 65536 * 64 and points[4]["page_size"] == 16
    varlen = points[8]
    lengths = varlen_lengths(serving_options())
    assert varlen["seq_lens"] == lengths and varlen["n"] == varlen["tokens"] == sum(lengths)
    assert varlen["batch"] == 16 and varlen["padded_len"] == max(lengths)
    assert varlen["flops"] == sum(2 * 8 * n * n * 64 for n in lengths)  # causal: half
    alibi = points[-1]
    assert (alibi["n"], alibi["heads"], alibi["bias_bytes_per_head"], alibi["bias_bytes"]) == \
        (32768, 8, 4 * 2**30, 32 * 2**30)
    assert all(p["status"] == "planned" and p["threads"] == 2 for p in points)
    only = serving_points(serving_options(), ("numba",), 1)
    assert [p["workload"] for p in only] == [READ, DECODE, PAGED, VARLEN, PADDED, ALIBI]
    assert (only[-1]["backend"], only[-1]["status"], only[-1]["reason"]) == \
        ("cython", "skipped", "cython is not among the benchmarked backends (numba)")
    assert all(p["status"] == "planned" for p in only[:-1])


def test_sweep_plans_serving_points_last_and_records_the_settings():
    config = SweepConfig(sizes=(64,), backends=("naive", "cython"), threads=1,
                         memory_budget_gib=1.0, causal=(False,), serving=True,
                         serving_options={"alibi_n": 512})
    points = plan_points(config)
    assert [p["workload"] for p in points[:2]] == ["forward", "forward"]
    assert points[2]["workload"] == READ and points[-1]["n"] == 512
    settings = _sweep._settings(config)
    assert settings["serving"] is True and settings["serving_options"]["alibi_n"] == 512
    assert _sweep._settings(SweepConfig(sizes=(), backends=(), threads=1,
                                        memory_budget_gib=1.0))["serving_options"] is None


# --- the workloads ---------------------------------------------------------------------------

def test_reference_rows_match_the_loop_oracle_with_an_alibi_bias():
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((3, 4, 9, 5))
    k, v = k[:2], v[:2]  # grouped heads: 4 query heads over 2 kv heads
    slopes = np.array([0.5, 0.25, 0.125, 1.0])
    positions = np.arange(9)
    bias = -slopes[:, None, None] * np.abs(positions[:, None] - positions[None, :])
    expected, _ = attention_oracle(q, k, v, mask=bias, causal=True)
    rows = np.array([0, 4, 8])
    got = reference_rows(q[:, rows], k, v, rows, slopes)
    np.testing.assert_allclose(got, expected[:, rows], rtol=1e-12, atol=1e-12)
    plain, _ = attention_oracle(q, k, v, causal=True)
    np.testing.assert_allclose(reference_rows(q, k, v, positions), plain, atol=1e-12)


def test_padding_round_trips_and_the_batch_check_catches_a_wrong_row():
    q, k, v, cu = varlen_inputs(serving_options(TINY))
    padded = pad_batch(q, cu)
    assert padded.shape == (4, 2, max(np.diff(cu)), 8)
    np.testing.assert_array_equal(unpad_batch(padded, cu), q)
    assert not padded[np.diff(cu).argmin(), :, -1].any()  # the shortest is padded with zeros
    out = fastattn.varlen_attention(q, k, v, cu, cu, causal=True, backend="naive")
    assert check_batch(out, q, k, v, cu, "naive") < 1e-6
    wrong = out.copy()
    wrong[cu[2] - 1, 1, 0] += 1e-3  # the last row of the second sequence
    with pytest.raises(AssertionError, match="x: result differs from the float64 formula"):
        check_batch(wrong, q, k, v, cu, "x")


def test_paged_cache_shuffles_blocks_and_keeps_every_token():
    k = np.random.default_rng(0).standard_normal((1, 2, 37, 3)).astype(np.float32)
    k_cache, v_cache, table, lengths = paged_cache(k, 2 * k, page_size=8)
    assert k_cache.shape == (5, 8, 2, 3) and lengths.tolist() == [37]
    assert sorted(table[0].tolist()) == list(range(5)) and table[0].tolist() != list(range(5))
    tokens = k_cache[table[0]].reshape(40, 2, 3)
    np.testing.assert_array_equal(tokens[:37].transpose(1, 0, 2), k[0])
    np.testing.assert_array_equal(v_cache[table[0]].reshape(40, 2, 3)[:37], 2 * tokens[:37])


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_decode_and_paged_give_attention_over_the_whole_cache(backend):
    options = serving_options(TINY)
    q, k, v = (x.astype(np.float64) for x in decode_inputs(options))
    expected, _ = attention_oracle(q, k, v, causal="lower_right")
    for workload, shape in ((DECODE, (1, 4, 1, 8)), (PAGED, (1, 4, 8))):
        prepared = prepare_serving(workload, backend, options, threads=2)
        out = prepared.run()
        assert out.shape == shape and prepared.max_abs_err < 1e-5
        np.testing.assert_allclose(out.reshape(expected.shape), expected, atol=1e-5)
        assert prepared.memory["traced_bytes"] >= out.nbytes and prepared.details == {}


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_varlen_and_padded_agree_on_the_real_tokens(backend):
    options = serving_options(TINY)
    q, k, v, cu = varlen_inputs(options)
    varlen = prepare_serving(VARLEN, backend, options, threads=2)
    padded = prepare_serving(PADDED, backend, options, threads=2)
    assert varlen.max_abs_err < 1e-5 and padded.max_abs_err < 1e-5
    packed = varlen.run()
    assert packed.shape == q.shape and padded.run().shape == (4, 2, max(np.diff(cu)), 8)
    np.testing.assert_allclose(unpad_batch(padded.run(), cu), packed, atol=1e-5)
    start, stop = cu[1], cu[2]
    second, _ = attention_oracle(*(x[start:stop].transpose(1, 0, 2).astype(np.float64)
                                   for x in (q, k, v)), causal=True)
    np.testing.assert_allclose(packed[start:stop].transpose(1, 0, 2), second, atol=1e-5)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_alibi_point_applies_the_slopes(backend):
    options = serving_options(TINY)
    prepared = prepare_serving(ALIBI, backend, options, threads=2)
    assert prepared.max_abs_err < 1e-5
    q, k, v = (x[0].astype(np.float64) for x in alibi_inputs(options))
    positions = np.arange(70)
    slopes = alibi_slopes(2).astype(np.float64)
    bias = -slopes[:, None, None] * np.abs(positions[:, None] - positions[None, :])
    expected, _ = attention_oracle(q, k, v, mask=bias, causal=True)
    np.testing.assert_allclose(prepared.run()[0], expected, atol=1e-5)
    plain, _ = attention_oracle(q, k, v, causal=True)
    assert np.abs(expected - plain).max() > 0.1  # the slopes matter at this size


@needs_torch
def test_torch_decode_and_padded_batch():
    options = serving_options(TINY)
    decode = prepare_serving(DECODE, "torch", options)  # threads=None: torch's own setting,
    padded = prepare_serving(PADDED, "torch", options)  # which this process keeps
    assert decode.max_abs_err < 1e-5 and padded.max_abs_err < 1e-5
    q, k, v, cu = varlen_inputs(options)
    expected = fastattn.varlen_attention(q, k, v, cu, cu, causal=True, backend="naive")
    np.testing.assert_allclose(unpad_batch(padded.run(), cu), expected, atol=1e-5)


def test_read_probe_times_every_way_and_runs_the_fastest():
    spec = {"kind": "serving", "workload": READ, "backend": "numpy", "threads": 2,
            "repeats": 3, "min_time_s": 0, "options": {"read_bytes": 2**20 + 5}}
    measured = measure(spec)
    assert measured["bytes_read"] == 2**20  # whole rows of 1024 values per thread
    rates = measured["read_gbytes_per_s_by_method"]
    assert sorted(rates) == sorted(read_methods()) and min(rates.values()) > 0
    assert measured["read_method"] == max(rates, key=rates.get)
    assert len(measured["times_s"]) == 3 and measured["isa"] is None


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_c_stream_read_sums_every_value_once(threads):
    if "cython" not in COMPILED_BACKENDS:
        pytest.skip("the Cython backend is not built")
    from fastattn._cython._kernel import stream_read

    assert "c-stream" in read_methods()
    for n in (0, 1, 31, 32 * threads + 7, 10_001):  # whole vectors, tails, empty shares
        values = np.random.default_rng(n).integers(0, 9, n).astype(np.float32)
        assert stream_read(values, threads) == float(values.sum(dtype=np.float64))
    with pytest.raises(ValueError, match="threads"):
        stream_read(np.ones(4, np.float32), 0)


def test_a_serving_point_in_its_own_process():
    if "cython" not in COMPILED_BACKENDS:
        pytest.skip("the Cython backend is not built")
    spec = _sweep._child_spec(
        SweepConfig(sizes=(), backends=("cython",), threads=1, memory_budget_gib=1.0,
                    repeats=2, min_time_s=0, serving=True, serving_options=TINY),
        serving_points(serving_options(TINY), ("cython",), 1)[2])
    assert spec["kind"] == "serving" and spec["workload"] == PAGED
    measured = run_child(spec, timeout=120)
    assert measured["status"] == "ok", measured.get("reason")
    assert measured["max_abs_err"] < 1e-5 and measured["isa"]
    assert len(measured["times_s"]) == 2 and measured["rss_bytes"] is not None


# --- the sweep, the report, the plot ---------------------------------------------------------

@pytest.fixture(scope="module")
def serving_sweep(tmp_path_factory):
    """``--serving only`` with tiny sizes, each point measured in this process (the child
    process itself is tested above): cython, or numba where it is not built."""
    backend = "cython" if "cython" in COMPILED_BACKENDS else COMPILED_BACKENDS[0]
    config = SweepConfig(sizes=(), backends=(backend,), threads=1, memory_budget_gib=1.0,
                         repeats=2, min_time_s=0, reference_size=0, serving=True,
                         serving_options={**TINY, "alibi_backends": [backend]})
    patch = pytest.MonkeyPatch()
    patch.setattr(_sweep, "run_child", lambda spec, timeout: {
        "status": "ok", **measure(json.loads(json.dumps(spec)))})
    try:
        results = run_sweep(config, progress=False, command=["fastattn", "bench"])
    finally:
        patch.undo()
    out = tmp_path_factory.mktemp("serving") / "report"
    written = write_report(results, out)
    return backend, out, [path.name for path in written]


def test_sweep_records_every_serving_point(serving_sweep):
    backend, out, written = serving_sweep
    results = load_results(out)
    assert results["schema_version"] == SCHEMA_VERSION == 6
    assert results["settings"]["serving_options"]["decode_keys"] == 100
    points = {p["workload"]: p for p in results["points"]}
    assert sorted(points) == sorted([READ, DECODE, PAGED, VARLEN, PADDED, ALIBI])
    assert all(p["status"] == "ok" for p in results["points"])
    decode = points[DECODE]
    assert decode["gbytes_per_s"] == pytest.approx(decode["bytes_read"] / decode["median_s"]
                                                   / 1e9)
    assert decode["tokens_per_s"] == pytest.approx(1 / decode["median_s"])
    assert points[VARLEN]["tokens_per_s"] == pytest.approx(
        sum(points[VARLEN]["seq_lens"]) / points[VARLEN]["median_s"])
    assert points[READ]["tokens_per_s"] is None and points[READ]["gbytes_per_s"] > 0
    assert points[ALIBI]["peak_bytes"] >= 2 * 70 * 8 * 4  # the output at least
    report = (out / "report.md").read_text()
    assert "## Serving" in report and written[0] == "results.json"
    if "serving.png" in written:  # with matplotlib
        assert "![Serving" in report and written == ["results.json", "serving.png", "report.md"]
    assert f"| paged_attention | {backend} |" in report


def _point(workload, backend, median, **fields):
    times = [median * 0.9, median, median * 1.2]
    return {"workload": workload, "backend": backend, "causal": True, "dtype": "float32",
            "threads": 2, "isa_requested": None, "isa": "avx2", "status": "ok",
            "reason": None, "median_s": median, "times_s": times, "min_s": times[0],
            "max_s": times[-1], "gflops": None, "peak_bytes": 2**20, "max_abs_err": 1e-7,
            **fields}


def _serving_results():
    """Hand-made serving results: a 20 GB/s read, decoding at 17 (cython), 8 (numba) and
    5 (torch) GB/s of 256 MiB of K and V; a varlen batch; ALiBi at 32768."""
    kv, lengths = 2 * 8 * 65536 * 64 * 4, [100, 300, 600]
    decode = dict(n=65536, batch=1, heads=32, kv_heads=8, head_dim=64, bytes_read=kv,
                  tokens=1)
    batch = dict(n=1000, batch=3, heads=8, kv_heads=8, head_dim=64, tokens=1000,
                 seq_lens=lengths, padded_len=600)
    points = [_point(READ, "numpy", 2**30 / 20e9, n=2**30, causal=False, batch=1, heads=None,
                     head_dim=None, bytes_read=2**30, read_method="gemv",
                     read_gbytes_per_s_by_method={"gemv": 20.0, "add.reduce": 12.5},
                     isa=None)]
    for workload, backend, rate in ((DECODE, "cython", 17.0), (PAGED, "cython", 16.6),
                                    (DECODE, "numba", 8.0), (DECODE, "torch", 5.0)):
        points.append(_point(workload, backend, kv / rate / 1e9, **decode))
        if workload == PAGED:
            points[-1]["page_size"] = 16
    points.append({**_point(PAGED, "numba", 1.0, **decode, page_size=16), "status": "failed",
                   "reason": "timed out after 9 s", "median_s": None})
    for workload, backend, median in ((VARLEN, "cython", 0.01), (PADDED, "cython", 0.03),
                                      (PADDED, "torch", 0.06)):
        points.append(_point(workload, backend, median, **batch))
    points.append(_point(ALIBI, "cython", 12.5, n=32768, batch=1, heads=8, kv_heads=8,
                         head_dim=64, tokens=32768, bias_bytes=32 * 2**30,
                         bias_bytes_per_head=4 * 2**30, peak_bytes=80 * 2**20))
    for point in points:
        if point["status"] == "ok":
            if point.get("bytes_read"):
                point["gbytes_per_s"] = point["bytes_read"] / point["median_s"] / 1e9
            point["tokens_per_s"] = (point["tokens"] / point["median_s"]
                                     if point.get("tokens") else None)
    return {"schema": "fastattn-bench", "schema_version": SCHEMA_VERSION,
            "created": "2026-11-24T00:00:00+00:00", "command": ["fastattn", "bench"],
            "machine": {"cpu": "AMD EPYC", "cpu_simd": ["avx2"], "available_cores": 2,
                        "logical_cpus": 2, "memory_gib": 23.5, "platform": "Linux",
                        "python": "3.11", "versions": {"numpy": "2.4"}, "blas": [],
                        "backends": {"cython": "available"}},
            "settings": {"threads": 2, "memory_budget_gib": 4.0, "repeats": 3,
                         "min_time_s": 0.3, "time_budget_s": 3.0, "sizes": [],
                         "serving": True, "serving_options": serving_options()},
            "reference": None, "points": points}


def _table(report, columns):
    header = "| " + " | ".join(columns) + " |"
    lines = report[report.index(header):].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_decode_table_gives_gbytes_share_of_bandwidth_and_ratio_to_torch():
    report = render_markdown(_serving_results())
    section = report[report.index("## Serving"):]
    assert "**Read bandwidth**: **20 GB/s**: 2 threads" in section
    assert "`gemv` (median of 3 reads" in section and "`add.reduce` 12.5 GB/s" in section
    assert "### Decoding: Lq = 1, Lk = 65536, Hq = 32, Hk = 8, D = 64, float32" in section
    assert "(256 MiB) over the median time" in section and "in pages of 16," in section
    rows = _table(section, DECODE_COLUMNS)
    assert [row[:2] for row in rows] == [["attention", "cython"], ["paged_attention", "cython"],
                                         ["attention", "numba"], ["paged_attention", "numba"],
                                         ["SDPA", "torch"]]
    cells = dict(zip(DECODE_COLUMNS, rows[0]))
    assert (cells["GB/s"], cells["% of read bandwidth"]) == ("17", "85%")
    assert cells["x torch"].startswith("3.4× (")  # 17 / 5
    assert dict(zip(DECODE_COLUMNS, rows[4]))["x torch"] == "1×"
    assert rows[3][3] == "failed: timed out after 9 s"
    assert ("**Decoding goal**, K and V read at ≥ 80 % of the read bandwidth: **met** by "
            "cython attention (85 %), cython paged_attention (83 %). Below it: numba "
            "attention (40 %).") in section


def test_decoding_goal_not_met_or_without_a_bandwidth():
    results = _serving_results()
    for point in results["points"]:
        if point["workload"] in (DECODE, PAGED) and point["status"] == "ok":
            point["gbytes_per_s"] /= 4
    assert ("the read bandwidth: **not met**: cython attention (21 %), cython "
            "paged_attention (21 %), numba attention (10 %)."
            in render_markdown(results))
    read = results["points"][0]
    read.update(status="failed", reason="killed by signal 9")
    report = render_markdown(results)
    assert "**Read bandwidth**: not measured (failed: killed by signal 9)" in report
    assert "bandwidth: not measured." in report
    assert dict(zip(DECODE_COLUMNS, _table(report, DECODE_COLUMNS)[0]))[
        "% of read bandwidth"] == "—"


def test_varlen_table_and_alibi_line():
    results = _serving_results()
    skipped = dict(results["points"][-1], backend="numba", status="skipped",
                   reason="numba is not among the benchmarked backends (cython)")
    results["points"].append(skipped)
    report = render_markdown(results)
    assert ("Lengths 100, 300, 600: 1,000 real tokens; padded to the longest (600), "
            "1,800 tokens, 56 % of them real.") in report
    rows = {tuple(row[:2]): dict(zip(VARLEN_COLUMNS, row))
            for row in _table(report, VARLEN_COLUMNS)}
    varlen = rows[("varlen_attention", "cython")]
    assert varlen["tokens/s"] == "100,000"
    assert varlen["x padded fastattn"].startswith("3× (")
    assert varlen["x torch padded"].startswith("6× (")
    assert rows[("attention, padded", "cython")]["x padded fastattn"] == "1×"
    assert rows[("SDPA, padded", "torch")]["x padded fastattn"] == "—"
    assert ("- cython, N = 32768, B = 1, H = 8, D = 64, causal, float32: **12,500 ms** per "
            "call (11,250–15,000), peak memory **80.0 MiB** (the output alone is 64.0 MiB); "
            "an additive float32 bias of Lq × Lk would need 4 GiB per head, 32 GiB for the "
            "8 heads (stated, never allocated)") in report
    assert ("- numba, N = 32768, B = 1, H = 8, D = 64, causal, float32: skipped: numba is "
            "not among the benchmarked backends (cython)") in report


def test_serving_plot_has_bars_the_bandwidth_and_the_goal(tmp_path):
    pytest.importorskip("matplotlib")
    from fastattn.bench._plots import draw_plots, plot_serving

    results = _serving_results()
    figure = plot_serving(results, tmp_path / "serving.png")
    decode, varlen = figure.axes[:2]
    assert len(decode.patches) == 4 and len(varlen.patches) == 3  # bars that ran
    heights = sorted(round(bar.get_height(), 6) for bar in decode.patches)
    assert heights == [5.0, 8.0, 16.6, 17.0]
    lines = sorted(line.get_ydata()[0] for line in decode.get_lines()
                   if len(line.get_ydata()) == 2 and line.get_linestyle() in ("--", ":"))
    assert lines == pytest.approx([16.0, 20.0])  # the goal and the bandwidth
    assert "not run: numba paged_attention" in [t.get_text() for t in decode.texts]
    assert figure.legends and (tmp_path / "serving.png").read_bytes()[:4] == b"\x89PNG"
    assert draw_plots(results, tmp_path) == [
        ("Serving: decoding against the read bandwidth, varlen against padding",
         "serving.png")]


def test_reports_without_the_section_are_unchanged(tmp_path):
    results = _serving_results()
    results["points"] = []
    assert "## Serving" not in render_markdown(results)
    results["points"] = _serving_results()["points"][:1]  # the read probe alone
    assert "## Serving" in render_markdown(results)
    pytest.importorskip("matplotlib")
    from fastattn.bench._plots import draw_plots

    assert draw_plots(results, tmp_path) == []


# --- results.json and compare ----------------------------------------------------------------

def test_results_round_trip_and_version_5_files_load(tmp_path):
    results = _serving_results()
    assert load_results(save_results(results, tmp_path / "new")) == results
    old = copy.deepcopy(results)
    old["schema_version"] = 5
    old["points"] = []
    save_results(old, tmp_path / "old")
    assert load_results(tmp_path / "old")["schema_version"] == SCHEMA_VERSION


def test_compare_with_and_without_the_section(tmp_path, capsys):
    a, b = _serving_results(), _serving_results()
    for point in b["points"]:
        if point["status"] == "ok":
            point["median_s"] *= 2  # B: everything twice as slow
    comparison = compare_results(a, b)
    workloads = {row["workload"] for row in comparison["rows"]}
    assert workloads == {READ, DECODE, PAGED, VARLEN, PADDED, ALIBI}
    assert all(row["time_ratio"] == pytest.approx(2.0) for row in comparison["rows"])
    text = format_comparison(comparison)
    assert "serving-decode cython" in text and "serving-read   numpy" in text
    assert "1,—,—" in text and "None" not in text  # the read probe has no heads
    assert READ not in {row["workload"] for row in regressions(comparison, 1.5)}
    assert len(regressions(comparison, 1.5)) == len(comparison["rows"]) - 1

    without = copy.deepcopy(a)
    without["points"] = []
    one_side = compare_results(a, without)
    assert one_side["rows"] == [] and len(one_side["only_a"]) == len(comparison["rows"])
    listed = format_comparison(one_side)
    assert "measured only in A: " in listed and "measured only in B" not in listed
    assert "serving-read numpy full N=1073741824 float32," in listed  # no B=, H= of None
    assert "serving-decode cython causal N=65536 float32 B=1 H=32" in listed
    save_results(a, tmp_path / "a")
    save_results(without, tmp_path / "b")
    assert main(["bench", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "(no point was measured in both reports)" in capsys.readouterr().out
