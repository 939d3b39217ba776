"""The benchmark report's dtype dimension and instruction-set levels, on tiny sizes.

``fastattn bench --dtypes ... --isa ...``: the points it plans, the inputs and checks
in half precision, what a point records (its dtype, the level it ran at), the dtype
comparison table and plot, and results.json.  No timing is judged here.
"""

import json
import sys

import numpy as np
import pytest

from fastattn._backends import available_backends
from fastattn._cli import build_parser, main
from fastattn.bench import SCHEMA_VERSION, compare_results, load_results
from fastattn.bench import _levels
from fastattn.bench._compare import format_comparison
from fastattn.bench._point import measure
from fastattn.bench._report import DTYPE_COLUMNS, TABLE_COLUMNS, render_markdown
from fastattn.bench._results import FORWARD, FORWARD_BACKWARD, point_key
from fastattn.bench._summary import above_reference
from fastattn.bench._sweep import SweepConfig, plan_points, run_sweep
from fastattn.bench._workload import (GRADIENT_TOLERANCE, Shape, attention_flops,
                                      check_gradients, check_result, make_inputs,
                                      make_runner, make_training_step,
                                      make_upstream_gradient, numpy_dtype)

ml_dtypes = pytest.importorskip("ml_dtypes")

HALF = ("float16", "bfloat16")


def _config(argv):
    from fastattn.bench._command import config_from_args

    return config_from_args(build_parser().parse_args(["bench"] + argv))


class FakeIsa:
    """A stand-in for fastattn._isa: four levels, of which this "machine" runs two."""

    LEVELS = ("baseline", "avx2", "avx512", "avx512bf16")

    def __init__(self):
        self.active = "avx2"

    def supported_levels(self):
        return ("baseline", "avx2")

    def active_level(self):
        return self.active

    def use_level(self, name):
        import contextlib

        @contextlib.contextmanager
        def switched():
            before, self.active = self.active, name
            try:
                yield name
            finally:
                self.active = before

        return switched()


@pytest.fixture
def fake_isa(monkeypatch):
    fake = FakeIsa()
    monkeypatch.setattr(_levels, "_isa_module", lambda: fake)
    return fake


# --- options and planning ------------------------------------------------------------------

def test_dtypes_default_to_the_single_dtype_and_parse_a_list():
    assert _config(["--quick", "--backends", "naive"]).point_dtypes() == ("float32",)
    assert _config(["--backends", "naive", "--dtype", "float64"]).point_dtypes() == ("float64",)
    config = _config(["--quick", "--backends", "naive", "--dtypes", "float32, BFloat16,float16"])
    assert config.point_dtypes() == ("float32", "bfloat16", "float16")
    assert config.reference_dtype() == "float32"
    assert config.sizes == (128, 256, 512, 1024, 2048)  # --quick keeps its sizes


def test_dtypes_option_refuses_unknown_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bench", "--dtypes", "float32,int8"])
    assert exit_info.value.code == 2
    assert "expected comma-separated dtypes among float32, float64, float16, bfloat16" in \
        capsys.readouterr().err


def test_bfloat16_without_ml_dtypes_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes now fails
    with pytest.raises(ModuleNotFoundError, match="pip install ml_dtypes"):
        numpy_dtype("bfloat16")
    status = main(["bench", "--backends", "naive", "--dtypes", "bfloat16", "--quiet"])
    assert status == 2
    assert "--dtypes bfloat16: bfloat16 needs the package ml_dtypes" in capsys.readouterr().err


def test_plan_times_every_dtype_of_one_n_and_mask_together():
    config = SweepConfig(sizes=(64, 128), backends=("naive", "cython", "torch"), threads=1,
                         memory_budget_gib=1.0, causal=(False,),
                         dtypes=("float32", "bfloat16", "float16"), backward_sizes=(32,),
                         backward_shapes=((1, 1),))
    points = plan_points(config)
    forward = [p for p in points if p["workload"] == FORWARD]
    assert [(p["n"], p["dtype"], p["backend"]) for p in forward[:6]] == [
        (64, "float32", "naive"), (64, "float32", "cython"), (64, "float32", "torch"),
        (64, "bfloat16", "naive"), (64, "bfloat16", "cython"), (64, "bfloat16", "torch")]
    assert len(forward) == 2 * 3 * 3
    backward = [p for p in points if p["workload"] == FORWARD_BACKWARD]
    assert [(p["dtype"], p["backend"]) for p in backward] == [
        (d, b) for d in ("float32", "bfloat16", "float16") for b in ("cython", "torch")]
    assert all(p["isa_requested"] is None and p["status"] == "planned" for p in points)
    assert forward[4]["flops"] == attention_flops(Shape(1, 8, 64, 64, 64))


def test_isa_levels_repeat_the_cython_points_and_skip_what_cannot_run(fake_isa):
    assert _levels.parse_levels("all") == ("baseline", "avx2")
    assert _levels.parse_levels("avx512bf16,baseline") == ("baseline", "avx512bf16")
    with pytest.raises(ValueError, match="--isa expects 'all' or levels among baseline"):
        _levels.parse_levels("sse9")
    config = SweepConfig(sizes=(64,), backends=("cython", "torch"), threads=1,
                         memory_budget_gib=1.0, causal=(True,), dtypes=("bfloat16",),
                         isa_levels=("baseline", "avx512bf16"))
    points = plan_points(config)
    assert [(p["backend"], p["isa_requested"], p["status"]) for p in points] == [
        ("cython", "baseline", "planned"), ("cython", "avx512bf16", "skipped"),
        ("torch", None, "planned")]
    assert points[1]["reason"] == ("level avx512bf16 cannot run here (this build and CPU "
                                   "run baseline, avx2)")


def test_isa_option_needs_the_cython_backend(fake_isa, capsys):
    assert _config(["--backends", "cython", "--isa", "all"]).isa_levels == ("baseline", "avx2")
    assert main(["bench", "--backends", "naive", "--isa", "all", "--quiet"]) == 2
    assert "cython is not among the backends" in capsys.readouterr().err


def test_bench_help_names_the_new_options(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "--dtypes DTYPE,..." in text and "--isa LEVEL,...|all" in text


# --- inputs, torch tensors and checks in half precision -----------------------------------

@pytest.mark.parametrize("dtype", HALF)
def test_half_inputs_are_the_float32_draws_rounded(dtype):
    wide = make_inputs(Shape(1, 2, 5, 7, 8, kv_heads=1, dtype="float32"), seed=3)
    half = make_inputs(Shape(1, 2, 5, 7, 8, kv_heads=1, dtype=dtype), seed=3)
    expected_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    for w, h in zip(wide, half):
        assert h.dtype == expected_dtype and h.shape == w.shape
        np.testing.assert_array_equal(h, w.astype(expected_dtype))
    upstream = make_upstream_gradient(Shape(1, 2, 5, 7, 8, dtype=dtype))
    assert upstream.dtype == expected_dtype and upstream.shape == (1, 2, 5, 8)


def test_torch_sees_the_bfloat16_bits_and_returns_them():
    torch = pytest.importorskip("torch")
    from fastattn.bench._workload import to_numpy, to_torch

    array = np.array([1.5, -2.0, 3.140625], dtype=ml_dtypes.bfloat16)
    tensor = to_torch(array)
    assert tensor.dtype == torch.bfloat16
    assert tensor.float().tolist() == [1.5, -2.0, 3.140625]
    back = to_numpy(tensor * 2)
    assert back.dtype == np.dtype(ml_dtypes.bfloat16)
    assert back.astype(np.float32).tolist() == [3.0, -4.0, 6.28125]
    tensor[0] = 0.25  # shares memory with the array
    assert float(array[0]) == 0.25


@pytest.mark.parametrize("dtype", HALF)
def test_torch_half_forward_and_backward_pass_the_checks(dtype):
    pytest.importorskip("torch")
    shape = Shape(1, 2, 24, 24, 8, dtype=dtype)
    q, k, v = make_inputs(shape)
    result = make_runner("torch", q, k, v, causal=True, threads=1)()
    assert result.dtype == q.dtype
    assert check_result(result, q, k, v, True, "torch") > 0  # rounded: not exact
    inputs = (q, k, v, make_upstream_gradient(shape))
    grads = make_training_step("torch", *inputs, causal=True, threads=1)()
    assert all(g.dtype == q.dtype for g in grads)
    error, heads = check_gradients(grads, *inputs, True, "torch")
    assert heads == 2 and 0 < error < GRADIENT_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", HALF)
def test_half_check_allows_rounding_and_catches_a_wrong_answer(dtype):
    q, k, v = make_inputs(Shape(1, 2, 16, 16, 8, dtype=dtype))
    exact = fastattn_naive_float64(q, k, v)
    rounded = exact.astype(q.dtype)  # the best a half result can be
    assert check_result(rounded, q, k, v, False, "cython") > 0
    wrong = rounded.copy()
    wrong[0, 1, 3, 2] += 0.25
    with pytest.raises(AssertionError, match=r"cython: result differs .*·\|reference\|"):
        check_result(wrong, q, k, v, False, "cython")
    nan = rounded.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(AssertionError, match="cython: result differs"):
        check_result(nan, q, k, v, False, "cython")


def fastattn_naive_float64(q, k, v):
    """Softmax attention of the float64 values of q, k, v (an independent formula)."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True) @ v


# --- one point, measured in this process ---------------------------------------------------

def _spec(**fields):
    spec = dict(kind="attention", backend="naive", causal=False, n=16, batch=1, heads=2,
                head_dim=8, dtype="float32", threads=1, repeats=1, min_time_s=0)
    spec.update(fields)
    return spec


def test_a_point_records_its_level_and_runs_at_the_requested_one(fake_isa, monkeypatch):
    assert measure(_spec(backend="naive"))["isa"] is None
    seen = []
    monkeypatch.setattr(_levels, "backend_isa", lambda backend: seen.append(
        (backend, fake_isa.active)) or fake_isa.active)
    measured = measure(_spec(dtype="bfloat16", isa="baseline"))
    assert seen == [("naive", "baseline")] and measured["isa"] == "baseline"
    assert fake_isa.active == "avx2"  # the level is restored after the point
    assert measured["max_abs_err"] < 8e-3 and len(measured["times_s"]) == 1


@pytest.mark.skipif("cython" not in available_backends(), reason="no Cython backend")
def test_a_cython_point_names_the_level_it_ran_at():
    supported = _levels.supported_levels()
    if not supported:
        pytest.skip("this fastattn has no instruction-set dispatch")
    active = _levels.active_level()
    assert active in supported
    assert measure(_spec(backend="cython", dtype="float16"))["isa"] == active
    assert measure(_spec(backend="cython", dtype="float16", isa=supported[0]))["isa"] == \
        supported[0]
    assert _levels.active_level() == active  # the point's level does not stay


def test_a_backend_that_refuses_a_half_dtype_is_skipped_not_failed(monkeypatch):
    from fastattn.bench import _workload

    real = _workload.make_runner

    def refusing(backend, q, *args, **kwargs):
        if q.dtype.name in HALF:
            raise TypeError(f"q is {q.dtype.name}: not supported here")
        return real(backend, q, *args, **kwargs)

    monkeypatch.setattr(_workload, "make_runner", refusing)
    skipped = measure(_spec(dtype="float16"))
    assert skipped == {"status": "skipped",
                       "reason": "naive does not take float16 inputs: q is float16: not "
                                 "supported here"}
    monkeypatch.setattr(_workload, "make_runner", lambda *a, **k: (_ for _ in ()).throw(
        TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):  # float32: a TypeError is a failure
        measure(_spec())


# --- a tiny sweep in child processes -------------------------------------------------------

@pytest.fixture(scope="module")
def half_sweep():
    backends = ("naive", "cython") if "cython" in available_backends() else ("naive",)
    config = SweepConfig(sizes=(16,), backends=backends, threads=1, memory_budget_gib=1.0,
                         causal=(False,), dtypes=("float32", "bfloat16"), heads=2,
                         head_dim=8, repeats=1, min_time_s=0, reference_size=0)
    return run_sweep(config, progress=False)


def test_sweep_records_dtype_and_level_of_each_point(half_sweep):
    points = half_sweep["points"]
    assert [(p["dtype"], p["backend"]) for p in points] == [
        (d, b) for d in ("float32", "bfloat16") for b in half_sweep["settings"]["backends"]]
    for point in points:
        assert point["status"] == "ok", point["reason"]
        tolerance = 8e-3 if point["dtype"] == "bfloat16" else 2e-4
        assert point["max_abs_err"] < tolerance
        expected = _levels.active_level() if point["backend"] == "cython" else None
        assert point["isa"] == expected and point["isa_requested"] is None
    assert half_sweep["settings"]["dtypes"] == ["float32", "bfloat16"]
    assert half_sweep["machine"]["isa"]["active"] == _levels.active_level()
    assert half_sweep["schema_version"] == SCHEMA_VERSION == 6


def test_sweep_report_round_trips_with_its_dtype_section(half_sweep, tmp_path):
    from fastattn.bench._report import write_report

    write_report(half_sweep, tmp_path, plots=False)
    assert load_results(tmp_path) == json.loads(json.dumps(half_sweep))
    report = (tmp_path / "report.md").read_text()
    assert "## Dtypes" in report and "| 16 | naive | — | bfloat16 |" in report
    assert "## bfloat16, B=1, H=2, D=8, no mask, 1 threads" in report


# --- the report and plots, from hand-made results ------------------------------------------

def _point(backend, dtype, n, median, isa=None, requested=None, causal=False):
    flops = attention_flops(Shape(1, 8, n, n, 64, causal=causal))
    return {"workload": FORWARD, "backend": backend, "causal": causal, "n": n,
            "dtype": dtype, "batch": 1, "heads": 8, "head_dim": 64, "threads": 2,
            "isa": isa, "isa_requested": requested, "status": "ok", "reason": None,
            "median_s": median, "times_s": [median * 0.9, median, median * 1.2],
            "flops": flops, "gflops": flops / median / 1e9, "tokens_per_s": n / median,
            "peak_bytes": 2**20, "max_abs_err": 1e-3}


def _dtype_results():
    """cython: float32 1 s, bfloat16 1.6x faster, float16 1.3x; torch 3x slower than
    cython in bfloat16, 2x in the others; the same at N = 2048 and 4096, both masks."""
    points = []
    for causal in (False, True):
        for n in (2048, 4096):
            for dtype, own in (("float32", 1.0), ("bfloat16", 1 / 1.6), ("float16", 1 / 1.3)):
                torch = own * (3.0 if dtype == "bfloat16" else 2.0)
                points += [_point("cython", dtype, n, own, "avx512bf16", causal=causal),
                           _point("torch", dtype, n, torch, "AVX2", causal=causal)]
    return {"schema": "fastattn-bench", "schema_version": SCHEMA_VERSION,
            "created": "2026-11-23T00:00:00+00:00", "command": ["fastattn", "bench"],
            "machine": {"cpu": "AMD EPYC", "cpu_simd": ["avx512f", "avx512_bf16"],
                        "available_cores": 2, "logical_cpus": 2, "memory_gib": 23.5,
                        "platform": "Linux", "python": "3.11", "versions": {}, "blas": [],
                        "backends": {"cython": "available"},
                        "isa": {"levels": list(FakeIsa.LEVELS), "supported":
                                list(FakeIsa.LEVELS), "active": "avx512bf16"}},
            "settings": {"threads": 2, "memory_budget_gib": 4.0, "repeats": 3,
                         "min_time_s": 0.3, "time_budget_s": 3.0, "sizes": [2048, 4096],
                         "dtypes": ["float32", "bfloat16", "float16"], "isa_levels": None},
            "reference": {"size": 4096, "dtype": "float32", "threads": 2, "best": "numpy",
                          "gflops": 0.4, "libraries": [{"library": "numpy", "gflops": 0.4}]},
            "points": points}


def _rows(text, columns, first_cells):
    found = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == len(columns):
            found.setdefault(tuple(cells[:first_cells]), dict(zip(columns, cells)))
    return found


def test_dtype_table_gives_the_speedups_over_float32_and_over_torch():
    report = render_markdown(_dtype_results())
    section = report[report.index("## Dtypes"):]
    assert section.count("| " + " | ".join(DTYPE_COLUMNS) + " |") == 2  # one per mask
    assert "### B=1, H=8, D=64, no mask, 2 threads" in section
    rows = _rows(section[:section.index("### B=1, H=8, D=64, causal")], DTYPE_COLUMNS, 4)
    bf16 = rows["4096", "cython", "avx512bf16", "bfloat16"]
    # float32 1 s over bfloat16 1/1.6 s; the range: 0.9 s over 1.2/1.6 s to 1.2 s over 0.9/1.6 s
    assert bf16["vs float32"] == "1.6× (1.2–2.13)"
    assert bf16["vs torch"] == "3× (2.25–4)"
    f16 = rows["4096", "cython", "avx512bf16", "float16"]
    assert f16["vs float32"].startswith("1.3× ") and f16["vs torch"].startswith("2× ")
    assert rows["4096", "cython", "avx512bf16", "float32"]["vs float32"] == "1×"
    assert rows["4096", "torch", "AVX2", "bfloat16"]["vs torch"] == "1×"
    order = [key for key in rows if key[0] == "2048"]
    assert [key[1:] for key in order] == [
        ("cython", "avx512bf16", "float32"), ("cython", "avx512bf16", "bfloat16"),
        ("cython", "avx512bf16", "float16"), ("torch", "AVX2", "float32"),
        ("torch", "AVX2", "bfloat16"), ("torch", "AVX2", "float16")]


def test_forward_tables_name_the_level_and_keep_the_reference_to_its_dtype():
    results = _dtype_results()
    report = render_markdown(results)
    assert "| instruction-set level | avx512bf16 for the Cython kernels, chosen at import " \
           "(this build and CPU run: baseline, avx2, avx512, avx512bf16) |" in report
    table = report[report.index("## bfloat16, B=1, H=8, D=64, no mask"):]
    row = _rows(table, TABLE_COLUMNS, 2)["4096", "cython"]
    assert row["ISA"] == "avx512bf16" and row["% of matmul ref"] == "—"
    float32 = report[report.index("## float32, B=1, H=8, D=64, no mask"):]
    assert _rows(float32, TABLE_COLUMNS, 2)["4096", "cython"]["% of matmul ref"] != "—"
    # Every point beats the 0.4 GFLOP/s reference; only the float32 ones are compared.
    above = above_reference(results)
    assert {p["dtype"] for found in above.values() for p in found} == {"float32"}
    assert "cython at 4 of 4 points" in report


def test_isa_series_are_rows_of_their_own_and_compare_by_level():
    results = _dtype_results()
    results["points"] = [p for p in results["points"] if p["dtype"] == "float32"]
    results["settings"].update(dtypes=["float32"], isa_levels=["baseline", "avx512bf16"])
    for point in [p for p in results["points"] if p["backend"] == "cython"]:
        point.update(isa_requested="avx512bf16")
        results["points"].append(dict(point, isa="baseline", isa_requested="baseline",
                                      median_s=2 * point["median_s"]))
    report = render_markdown(results)
    assert "`--isa` also times them at baseline, avx512bf16" in report
    assert "## Dtypes" not in report  # one dtype: nothing to compare
    table = report[report.index("## float32, B=1, H=8, D=64, no mask"):]
    lines = [line for line in table.splitlines() if line.startswith("| 4096 | cython |")][:2]
    assert [line.split("|")[3].strip() for line in lines] == ["baseline", "avx512bf16"]
    slower = json.loads(json.dumps(results))
    for point in slower["points"]:
        if point["isa_requested"] == "baseline":
            point["median_s"] *= 1.5
    comparison = compare_results(results, slower)
    ratios = {(r["backend"], r["isa_requested"], r["n"], r["causal"]): r["time_ratio"]
              for r in comparison["rows"]}
    assert ratios["cython", "baseline", 4096, False] == pytest.approx(1.5)
    assert ratios["cython", "avx512bf16", 4096, False] == 1.0
    assert "cython [baseline]" in format_comparison(comparison)


def test_schema_4_points_load_without_a_level(tmp_path):
    old = _dtype_results()
    old["schema_version"] = 4
    for point in old["points"]:
        del point["isa"], point["isa_requested"]
    del old["machine"]["isa"]
    (tmp_path / "results.json").write_text(json.dumps(old))
    loaded = load_results(tmp_path)
    assert loaded["schema_version"] == SCHEMA_VERSION
    report = render_markdown(loaded)
    assert "| instruction-set level |" not in report  # no machine row: not recorded
    row = _rows(report[report.index("## float32"):], TABLE_COLUMNS, 2)["4096", "cython"]
    assert row["ISA"] == "—"
    assert point_key(old["points"][0])[-2:] == (None, FORWARD)


def test_dtype_plot_has_a_line_per_backend_and_dtype(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.container import ErrorbarContainer

    from fastattn.bench._plots import plot_dtypes

    results = _dtype_results()
    figure = plot_dtypes(results, tmp_path / "dtypes.png")
    axes = [ax for ax in figure.axes if ax.get_xlabel()]
    assert [ax.get_title() for ax in axes] == ["no mask", "causal mask"]
    assert "ISA: cython avx512bf16, torch AVX2" in figure.get_suptitle()
    lines = {c.get_label(): list(c.lines[0].get_ydata()) for c in axes[0].containers
             if isinstance(c, ErrorbarContainer)}
    flops = attention_flops(Shape(1, 8, 2048, 2048, 64))
    assert set(lines) == {f"{b} {d}" for b in ("cython", "torch")
                          for d in ("float32", "bfloat16", "float16")}
    assert lines["cython bfloat16"][0] == pytest.approx(1.6 * flops / 1e9)
    assert len(figure.legends) == 1
    legend_box = figure.legends[0].get_window_extent()
    assert not any(legend_box.overlaps(ax.get_window_extent()) for ax in axes)


def _grid(figure):
    """The figure's panels as rows of the grid, each from left to right."""
    rows = {}
    for ax in figure.axes:
        spec = ax.get_subplotspec()
        rows.setdefault(spec.rowspan.start, []).append((spec.colspan.start, ax))
    return [[ax for _, ax in sorted(row, key=lambda item: item[0])]
            for _, row in sorted(rows.items(), key=lambda item: item[0])]


def test_the_other_plots_get_a_row_per_dtype_and_the_dtype_plot_is_drawn(monkeypatch,
                                                                           tmp_path):
    pytest.importorskip("matplotlib")
    from fastattn.bench import _plots

    results = _dtype_results()
    figure, panels = _plots._figure(results, "Attention throughput")
    rows = [[ax.get_title() for ax in row] for row in _grid(figure)]
    assert rows == [["float32, no mask", "float32, causal mask"],
                    ["bfloat16, no mask", "bfloat16, causal mask"],
                    ["float16, no mask", "float16, causal mask"]]
    assert len(panels) == 6
    assert figure.get_suptitle().splitlines() == [
        "Attention throughput — B=1, H=8, D=64, 2 threads", "ISA: cython avx512bf16, torch AVX2"]
    drawn = []
    monkeypatch.setattr(_plots, "_DRAW", {name: lambda results, path: drawn.append(path.name)
                                          for name in _plots._DRAW})
    names = [name for _, name in _plots.draw_plots(results, tmp_path)]
    assert names == drawn == ["time.png", "memory.png", "gflops.png", "speedup.png",
                              "dtypes.png"]
    one_dtype = dict(results, points=[p for p in results["points"] if p["dtype"] == "float32"])
    assert "dtypes.png" not in [name for _, name in _plots.draw_plots(one_dtype, tmp_path)]


def test_a_fake_isa_module_stands_in_for_the_real_one(fake_isa):
    """The fixture's stand-in behaves like fastattn._isa where the tests rely on it."""
    assert isinstance(fake_isa, FakeIsa) and _levels.active_level() == "avx2"
    with _levels.level_context("baseline"):
        assert _levels.active_level() == "baseline"
    assert _levels.active_level() == "avx2"
    assert _levels.machine_levels()["supported"] == ["baseline", "avx2"]


def test_model_points_name_the_level_of_their_attention():
    pytest.importorskip("torch")
    from fastattn._backends import auto_choice
    from fastattn.bench._point import _model_isa
    from fastattn.bench._report import _model_lines

    assert _model_isa("fastattn") == _levels.backend_isa(auto_choice())
    assert _model_isa("sdpa") == _model_isa("eager") == _levels.backend_isa("torch")
    point = dict(workload="llama-prefill", n=512, causal=True, dtype="float32", batch=1,
                 heads=8, head_dim=32, threads=2, flops=None, tokens=512, status="ok",
                 reason=None, median_s=0.1, times_s=[0.1], gflops=None, tokens_per_s=5120,
                 peak_bytes=2**20)
    results = {"points": [dict(point, backend="fastattn", isa="avx512bf16"),
                          dict(point, backend="sdpa", isa="AVX2")]}
    text = "\n".join(_model_lines(results))
    assert "Instruction-set levels: fastattn avx512bf16, sdpa AVX2." in text
