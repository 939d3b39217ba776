"""The benchmark report machinery (``fastattn bench``) end to end, on tiny sizes.

These tests check that the sweep runs, skips and records what it should, that the
report files are written and read back, and that two reports compare correctly.
They do not judge speed: benchmarks live in ``bench/``.
"""

import ast
import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastattn
from fastattn._backends import available_backends
from fastattn._cli import build_parser, main
from fastattn.bench import SCHEMA_VERSION, compare_results, load_results, save_results
from fastattn.bench._compare import format_comparison, regressions
from fastattn.bench._memory import measure_peak
from fastattn.bench._reference import reference_libraries
from fastattn.bench._report import BACKWARD_COLUMNS, TABLE_COLUMNS, render_markdown
from fastattn.bench._results import FORWARD, FORWARD_BACKWARD, point_key
from fastattn.bench._sweep import SweepConfig, plan_points, run_child, run_sweep
from fastattn.bench._workload import (GRADIENT_TOLERANCE, Shape, attention_flops,
                                      check_gradients, check_result, gradient_check_heads,
                                      make_inputs, make_runner, make_training_step,
                                      make_upstream_gradient, naive_bytes_needed,
                                      training_flops)

PACKAGE_DIR = Path(fastattn.__file__).resolve().parent

HEADS, HEAD_DIM = 2, 8
# Naive at N=16 needs 16 KiB of scores, at N=32 64 KiB: a 32 KiB budget runs one, skips one.
TINY_BUDGET_GIB = 32 * 1024 / 2**30
PNGS = ("time.png", "memory.png", "gflops.png", "speedup.png", "backward_time.png")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """One tiny sweep through the command line: N=16,32, naive+numba, both masks; and
    forward + backward of numba at N=16, H=2 and H=1 (naive is the check, not timed)."""
    if "numba" not in available_backends():
        pytest.skip("the numba backend is not available")
    out = tmp_path_factory.mktemp("bench") / "report"
    status = main(["bench", "--sizes", "16,32", "--backends", "naive,numba",
                   "--backward-sizes", "16",
                   "--heads", str(HEADS), "--head-dim", str(HEAD_DIM), "--repeats", "2",
                   "--min-time", "0",
                   "--reference-size", "64", "--memory-budget", repr(TINY_BUDGET_GIB),
                   "--quiet", "--out", str(out)])
    assert status == 0
    return out


def _points(results, **fields):
    return [p for p in results["points"] if all(p[k] == v for k, v in fields.items())]


def test_sweep_writes_report_and_results(report_dir):
    assert (report_dir / "report.md").is_file()
    results = load_results(report_dir)
    assert results["schema_version"] == SCHEMA_VERSION
    assert results["settings"]["sizes"] == [16, 32]
    reference = results["reference"]
    measured = {m["library"]: m for m in reference["libraries"]}
    assert sorted(measured) == sorted(reference_libraries())  # numpy, and torch if installed
    assert reference["gflops"] == max(m["gflops"] for m in measured.values())
    assert measured[reference["best"]]["gflops"] == reference["gflops"]
    forward = _points(results, workload=FORWARD)
    assert len(forward) == 2 * 2 * 2  # backends x sizes x masks
    assert len(results["points"]) == len(forward) + 2 * 2  # numba fwd+bwd: shapes x masks
    for point in _points(results, backend="numba", workload=FORWARD):
        assert point["status"] == "ok"
        assert point["median_s"] > 0 and len(point["times_s"]) in (1, 2)
        assert point["min_s"] <= point["median_s"] <= point["max_s"]
        shape = Shape(1, HEADS, point["n"], point["n"], HEAD_DIM, causal=point["causal"])
        assert point["flops"] == attention_flops(shape)
        assert point["gflops"] == pytest.approx(point["flops"] / point["median_s"] / 1e9)
        assert point["tokens_per_s"] == pytest.approx(point["n"] / point["median_s"])
        # The output alone is HEADS * N * HEAD_DIM float32 values.
        assert point["peak_bytes"] >= HEADS * point["n"] * HEAD_DIM * 4
        assert point["max_abs_err"] < 1e-5


def test_naive_over_budget_is_skipped_not_crashed(report_dir):
    results = load_results(report_dir)
    ran = _points(results, backend="naive", n=16)
    skipped = _points(results, backend="naive", n=32)
    assert [p["status"] for p in ran] == ["ok", "ok"]
    assert [p["status"] for p in skipped] == ["skipped", "skipped"]
    for point in skipped:
        assert point["reason"].startswith("would need")
        assert point.get("median_s") is None
    report = (report_dir / "report.md").read_text()
    assert "skipped: would need" in report
    assert "| 16 | numba |" in report and "| 32 | numba |" in report


def test_report_tables_show_the_spread_and_the_matmul_reference(report_dir):
    report = (report_dir / "report.md").read_text()
    assert "ceiling" not in report.lower()
    assert "**Matmul reference**: float32 matmul 64³" in report
    header = "| " + " | ".join(TABLE_COLUMNS) + " |"
    assert report.count(header) == 2  # one table per mask
    assert {"min ms", "max ms", "calls", "% of matmul ref"} <= set(TABLE_COLUMNS)
    results = load_results(report_dir)
    point = _points(results, backend="numba", n=16, causal=False)[0]
    row = next(line for line in report.splitlines() if line.startswith("| 16 | numba |"))
    cells = dict(zip(TABLE_COLUMNS, (c.strip() for c in row.strip("|").split("|"))))
    assert float(cells["min ms"]) == pytest.approx(point["min_s"] * 1e3, rel=0.01)
    assert float(cells["max ms"]) == pytest.approx(point["max_s"] * 1e3, rel=0.01)
    assert int(cells["calls"]) == len(point["times_s"])


def _passing_results(coretype="Haswell"):
    """Hand-made results: cython at 300 GFLOP/s against a 229 GFLOP/s NumPy reference."""
    points = []
    for n, cython_s in ((512, 0.0018), (1024, 0.0067)):
        flops = attention_flops(Shape(1, 8, n, n, 64))
        for backend, median in (("numba", 4 * cython_s), ("cython", cython_s)):
            points.append({"workload": FORWARD, "backend": backend, "causal": False,
                           "n": n, "dtype": "float32", "batch": 1, "heads": 8,
                           "head_dim": 64, "threads": 2, "status": "ok", "reason": None,
                           "median_s": median,
                           "times_s": [median * 0.9, median, median * 1.3], "flops": flops,
                           "gflops": flops / median / 1e9, "tokens_per_s": n / median,
                           "peak_bytes": 2**20, "max_abs_err": 1e-7})
    numpy = {"library": "numpy", "gflops": 229.0, "openblas_coretype": coretype,
             "blas": "openblas 0.3.31, Haswell kernels"}
    torch = {"library": "torch", "gflops": 198.0, "blas": "torch 2.13.0, mkl"}
    return {"schema": "fastattn-bench", "schema_version": SCHEMA_VERSION,
            "created": "2026-11-22T00:00:00+00:00", "command": ["fastattn", "bench"],
            "machine": {"cpu": "AMD EPYC", "cpu_vendor": "AuthenticAMD",
                        "cpu_simd": ["avx2", "avx512f"], "available_cores": 2,
                        "logical_cpus": 2, "memory_gib": 23.5, "platform": "Linux",
                        "python": "3.11", "versions": {"numpy": "2.4"}, "blas": [],
                        "backends": {"cython": "available"}},
            "settings": {"threads": 2, "memory_budget_gib": 4.0, "repeats": 3,
                         "min_time_s": 0.3, "time_budget_s": 3.0, "sizes": [512, 1024]},
            "reference": {"size": 4096, "dtype": "float32", "threads": 2,
                          "libraries": [numpy, torch], "best": "numpy", "gflops": 229.0},
            "points": points}


def test_report_says_who_passes_the_reference_and_why():
    report = render_markdown(_passing_results())
    assert "**229.0 GFLOP/s** by numpy (openblas 0.3.31, Haswell kernels; kernels forced by " \
           "`OPENBLAS_CORETYPE=Haswell`); torch: 198.0 GFLOP/s" in report
    above = next(line for line in report.splitlines() if line.startswith("**Above the"))
    assert "cython at 2 of 2 points" in above and "numba" not in above.split(". Why")[0]
    assert "forced by OPENBLAS_CORETYPE" in above
    assert "AVX-512" in above and "AVX-512 level" in above
    assert "MKL" in above  # torch's BLAS on this AMD CPU
    assert "env -u OPENBLAS_CORETYPE" in report

    plain = _passing_results(coretype=None)
    for point in plain["points"]:
        point["gflops"] /= 2  # nobody passes: nothing to explain
    report = render_markdown(plain)
    assert "Above the reference" not in report and "OPENBLAS_CORETYPE" not in report


def test_schema_1_results_are_read_with_their_ceiling_as_the_reference(tmp_path):
    old = _passing_results()
    del old["reference"]
    old["schema_version"] = 1
    old["ceiling"] = {"size": 4096, "dtype": "float32", "threads": 2, "median_s": 0.6,
                      "gflops": 229.0}
    (tmp_path / "results.json").write_text(json.dumps(old))
    results = load_results(tmp_path)
    assert "ceiling" not in results and results["schema_version"] == SCHEMA_VERSION
    assert results["reference"]["best"] == "numpy" and results["reference"]["gflops"] == 229.0
    assert "**Above the reference**: cython" in render_markdown(results)


def test_results_round_trip(report_dir, tmp_path):
    results = load_results(report_dir)
    copy_path = save_results(results, tmp_path / "copy")
    again = load_results(copy_path)
    assert again == results
    assert [point_key(p) for p in again["points"]] == [point_key(p) for p in results["points"]]


def test_plots_are_written(report_dir):
    pytest.importorskip("matplotlib")
    report = (report_dir / "report.md").read_text()
    for name in PNGS:
        data = (report_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"]({name})" in report


@pytest.mark.parametrize("name", ["time", "gflops", "speedup", "memory"])
def test_plots_have_bars_and_a_legend_outside_the_panels(name, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.container import ErrorbarContainer

    from fastattn.bench import _plots

    results = _passing_results()
    results["points"].insert(0, dict(results["points"][0], backend="naive",
                                     median_s=0.05, times_s=[0.05, 0.06]))
    figure = getattr(_plots, f"plot_{name}")(results, tmp_path / f"{name}.png")
    axes = [ax for ax in figure.axes if ax.get_xlabel()]
    assert axes and all(ax.get_legend() is None for ax in axes)
    assert len(figure.legends) == 1  # one legend for the panels, under them
    legend_box = figure.legends[0].get_window_extent()
    for ax in axes:
        assert not legend_box.overlaps(ax.get_window_extent())
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert bool(bars) == (name != "memory")  # memory is one call: no spread to show
    if name == "gflops":
        labels = [t.get_text() for t in figure.legends[0].get_texts()]
        assert any(label.startswith("matmul reference: numpy float32 4096³, "
                                    "OPENBLAS_CORETYPE=Haswell") for label in labels)


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_passing_results()))
    code = f"""
import json, sys, matplotlib
matplotlib.use("svg")
from fastattn.bench._plots import draw_plots
from pathlib import Path
draw_plots(json.loads(Path({str(path)!r}).read_text()), Path({str(tmp_path)!r}))
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=PACKAGE_DIR.parent, check=True)
    assert done.stdout.split() == ["svg", "False"]
    assert (tmp_path / "gflops.png").is_file()


def test_compare_with_itself_is_one(report_dir):
    comparison = compare_results(report_dir, report_dir / "results.json")
    assert len(comparison["rows"]) == 6 + 4  # the naive N=32 points ran in neither
    assert all(row["time_ratio"] == 1.0 for row in comparison["rows"])
    assert not comparison["only_a"] and not comparison["only_b"]


def _hand_made(medians):
    """Results with one numba point per ``(n, causal) -> median seconds``."""
    points = []
    for (n, causal), median in medians.items():
        flops = attention_flops(Shape(1, 8, n, n, 64, causal=causal))
        points.append({"backend": "numba", "causal": causal, "n": n, "dtype": "float32",
                       "batch": 1, "heads": 8, "head_dim": 64, "threads": 2,
                       "status": "ok", "reason": None, "median_s": median,
                       "gflops": flops / median / 1e9})
    return {"schema": "fastattn-bench", "schema_version": SCHEMA_VERSION, "points": points}


def test_compare_finds_the_ratios(tmp_path):
    a = _hand_made({(256, False): 0.010, (512, False): 0.040, (256, True): 0.008})
    b = _hand_made({(256, False): 0.015, (512, False): 0.020, (1024, False): 0.1})
    save_results(a, tmp_path / "a")
    path_b = save_results(b, tmp_path / "b")

    comparison = compare_results(tmp_path / "a", path_b)
    ratios = {(r["n"], r["causal"]): r for r in comparison["rows"]}
    assert set(ratios) == {(256, False), (512, False)}
    assert ratios[256, False]["time_ratio"] == pytest.approx(1.5)
    assert ratios[256, False]["gflops_ratio"] == pytest.approx(1 / 1.5)
    assert ratios[512, False]["time_ratio"] == pytest.approx(0.5)
    assert ratios[512, False]["a_ms"] == pytest.approx(40.0)
    assert [key[2] for key in comparison["only_a"]] == [256]  # the causal one
    assert [key[2] for key in comparison["only_b"]] == [1024]
    assert [r["n"] for r in regressions(comparison, 1.10)] == [256]
    text = format_comparison(comparison, "a", "b")
    assert "1.500x" in text and "0.500x" in text and "measured only in B" in text


def test_compare_command_gates_on_slowdown(tmp_path, capsys):
    save_results(_hand_made({(256, False): 0.010}), tmp_path / "a")
    save_results(_hand_made({(256, False): 0.0105}), tmp_path / "b")
    args = ["bench", "compare", str(tmp_path / "a"), str(tmp_path / "b")]
    assert main(args + ["--max-slowdown", "10"]) == 0
    assert "1.050x" in capsys.readouterr().out
    assert main(args + ["--max-slowdown", "2"]) == 1
    assert "slower" in capsys.readouterr().err


def test_load_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(FileNotFoundError, match="no benchmark results"):
        load_results(tmp_path)
    newer = copy.deepcopy(_hand_made({}))
    newer["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "results.json").write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="schema_version"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"points": []}))
    with pytest.raises(ValueError, match="not a fastattn benchmark"):
        load_results(tmp_path / "results.json")


def test_plan_skips_naive_over_budget_without_running():
    config = SweepConfig(sizes=(64, 8192), backends=("naive", "numba"), threads=1,
                         memory_budget_gib=1.0, causal=(False,))
    points = {(p["backend"], p["n"]): p for p in plan_points(config)}
    assert points["naive", 64]["status"] == "planned"
    assert points["numba", 8192]["status"] == "planned"
    big = points["naive", 8192]
    needed = naive_bytes_needed(Shape(1, 8, 8192, 8192, 64))
    assert big["status"] == "skipped" and big["naive_bytes_needed"] == needed
    assert big["reason"] == f"would need {needed / 2**30:.3g} GiB (memory budget 1 GiB)"


def test_sweep_records_a_failing_point():
    config = SweepConfig(sizes=(16,), backends=("naive", "nonexistent"), threads=1,
                         memory_budget_gib=1.0, causal=(False,), heads=1, head_dim=4,
                         repeats=1, reference_size=0)
    stream = io.StringIO()
    results = run_sweep(config, stream=stream)
    naive, broken = results["points"]
    assert naive["status"] == "ok"
    assert broken["status"] == "failed" and "exit status" in broken["reason"]
    assert "[2/2] nonexistent" in stream.getvalue()


def test_child_timeout_is_reported():
    spec = {"kind": "matmul", "size": 4000, "dtype": "float64", "threads": 1, "repeats": 50}
    measured = run_child(spec, timeout=0.5)
    assert measured == {"status": "failed", "reason": "timed out after 0.5 s"}


def test_measure_peak_sees_numpy_buffers():
    # 64 MB: above glibc's largest mmap threshold (32 MiB), so the buffer gets fresh pages
    # and RSS must rise, whatever freed memory earlier tests left to the allocator.
    result, memory = measure_peak(lambda: np.ones(8_000_000))
    assert result.shape == (8_000_000,)
    assert memory["traced_bytes"] >= 64_000_000
    assert memory["rss_method"] in ("hwm-reset", "psutil-sampling", "ru_maxrss", "unavailable")
    if memory["rss_method"] == "hwm-reset":
        assert memory["rss_bytes"] >= 60_000_000


def test_child_imports_this_fastattn_not_one_in_the_working_directory(tmp_path, monkeypatch):
    """Run from a source checkout (no built extension), the children must still measure the
    installed package the parent uses: ``python -m`` puts the working directory first."""
    decoy = tmp_path / "fastattn"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy in the working directory')\n")
    monkeypatch.chdir(tmp_path)
    spec = {"kind": "matmul", "size": 8, "dtype": "float64", "threads": 1, "repeats": 1}
    measured = run_child(spec, timeout=120)
    assert measured["status"] == "ok", measured


def test_check_result_catches_a_wrong_answer():
    q, k, v = make_inputs(Shape(1, 2, 16, 16, 8, kv_heads=1))
    for backend in ("naive", "numba" if "numba" in available_backends() else "naive"):
        result = make_runner(backend, q, k, v, causal=True)()
        assert check_result(result, q, k, v, True, backend) < 1e-5
        result[0, 1, 3, 2] += 1e-3  # the naive check looks at the first 64 rows
        with pytest.raises(AssertionError, match=f"{backend}: result differs"):
            check_result(result, q, k, v, True, backend)


def test_the_suites_use_the_package_measurement():
    """bench/conftest.py prepares its calls with fastattn.bench, not a copy of its own."""
    conftest = (PACKAGE_DIR.parent / "bench" / "conftest.py")
    if not conftest.is_file():
        pytest.skip("no bench/ suites next to this fastattn")
    tree = ast.parse(conftest.read_text())
    defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert "_independent_reference" not in defined and "prepare_attention" in conftest.read_text()


# --- forward + backward ------------------------------------------------------------------

def test_sweep_times_forward_backward_with_the_backward_peak_and_a_gradient_check(report_dir):
    results = load_results(report_dir)
    settings = results["settings"]
    assert settings["backward_sizes"] == [16] and settings["backward_backends"] == ["numba"]
    assert settings["backward_shapes"] == [[1, HEADS], [1, 1]]
    points = _points(results, workload=FORWARD_BACKWARD)
    assert {(p["heads"], p["causal"]) for p in points} == {
        (HEADS, False), (HEADS, True), (1, False), (1, True)}
    for point in points:
        assert point["backend"] == "numba" and point["status"] == "ok", point
        assert point["min_s"] <= point["median_s"] <= point["max_s"]
        shape = Shape(1, point["heads"], 16, 16, HEAD_DIM, causal=point["causal"])
        assert point["flops"] == training_flops(shape) == 3.5 * attention_flops(shape)
        assert point["gflops"] == pytest.approx(point["flops"] / point["median_s"] / 1e9)
        # The backward returns dq, dk and dv: 3 * heads * N * D float32 values.
        assert point["traced_bytes"] >= 3 * point["heads"] * 16 * HEAD_DIM * 4
        assert point["checked_heads"] == point["heads"]
        assert 0 <= point["max_grad_err"] < GRADIENT_TOLERANCE["float32"]
        assert "max_abs_err" not in point


def test_report_has_a_forward_backward_table_per_shape_and_mask(report_dir):
    report = (report_dir / "report.md").read_text()
    section = report[report.index("## Forward + backward"):report.index("## Plots")]
    header = "| " + " | ".join(BACKWARD_COLUMNS) + " |"
    assert section.count(header) == 4 and report.count(header) == 4
    assert f"### float32, B=1, H={HEADS}, D={HEAD_DIM}, causal" in section
    assert f"### float32, B=1, H=1, D={HEAD_DIM}, no mask" in section
    assert "**Peak memory of the backward** at the largest N" in section
    rows = [line for line in section.splitlines() if line.startswith("| 16 | numba |")]
    assert len(rows) == 4
    cells = dict(zip(BACKWARD_COLUMNS, (c.strip() for c in rows[0].strip("|").split("|"))))
    assert cells["speedup vs torch"] == "—"  # torch did not run
    assert float(cells["max grad err"]) < GRADIENT_TOLERANCE["float32"]
    # The forward tables hold no forward + backward row.
    assert "| 16 | numba |" in report[:report.index("## Forward + backward")]
    assert report[:report.index("## Forward + backward")].count("| 16 | numba |") == 2


def _training_points(n, heads, causal, medians, times=(0.9, 1.0, 1.2)):
    """Hand-made forward + backward points: ``medians`` is ``{backend: seconds}``."""
    shape = Shape(1, heads, n, n, 64, causal=causal)
    points = []
    for backend, median in medians.items():
        points.append({"workload": FORWARD_BACKWARD, "backend": backend, "causal": causal,
                       "n": n, "dtype": "float32", "batch": 1, "heads": heads,
                       "head_dim": 64, "threads": 2, "status": "ok", "reason": None,
                       "median_s": median, "times_s": [median * t for t in times],
                       "flops": training_flops(shape),
                       "gflops": training_flops(shape) / median / 1e9,
                       "tokens_per_s": n / median, "peak_bytes": 3 * heads * n * 64 * 4,
                       "rss_bytes": None, "traced_bytes": 3 * heads * n * 64 * 4,
                       "max_grad_err": 2e-6, "checked_heads": gradient_check_heads(shape)})
    return points


def _training_results():
    """The forward results of :func:`_passing_results` and a forward + backward sweep:
    torch, cython (2x torch) and numba (1.25x torch) at N = 512, 1024, H = 8 and 1."""
    results = _passing_results()
    for heads in (8, 1):
        for causal in (False, True):
            for n in (512, 1024):
                torch = 0.01 * heads * (n / 512) ** 2
                results["points"] += _training_points(
                    n, heads, causal, {"torch": torch, "cython": torch / 2,
                                       "numba": torch / 1.25})
    results["settings"].update(backward_sizes=[512, 1024], backward_shapes=[[1, 8], [1, 1]])
    return results


def test_forward_backward_table_gives_the_speedup_over_torch_and_its_range():
    report = render_markdown(_training_results())
    section = report[report.index("## Forward + backward"):]
    table = section[section.index("### float32, B=1, H=8, D=64, no mask"):]
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line
            for line in table.splitlines()[4:10]}
    cells = dict(zip(BACKWARD_COLUMNS, (c.strip() for c in rows["1024", "cython"]
                                        .strip("|").split("|"))))
    # torch median / cython median = 2; the range: torch's fastest (0.9) over cython's
    # slowest (1.2 / 2), and torch's slowest (1.2) over cython's fastest (0.9 / 2).
    assert cells["speedup vs torch"] == "2× (1.5–2.67)"
    assert float(cells["median ms"]) == pytest.approx(0.01 * 8 * (1024 / 512) ** 2 / 2 * 1e3)
    assert cells["bwd peak MiB"] == f"{3 * 8 * 1024 * 64 * 4 / 2**20:.1f}"
    assert cells["max grad err"] == "2.0e-06 (4/8 heads)"  # N=1024: 4 heads fit the check
    torch_cells = rows["1024", "torch"].strip("|").split("|")
    assert torch_cells[BACKWARD_COLUMNS.index("speedup vs torch")].strip() == "1×"
    assert "- B=1, H=8, no mask, N = 1024: cython 6.0 MiB, numba 6.0 MiB, torch 6.0 MiB" in section
    assert "- B=1, H=1, causal, N = 1024: " in section
    # The forward's matmul-reference paragraph counts forward points only.
    assert "cython at 2 of 2 points" in report


def test_forward_backward_results_round_trip_and_compare_by_workload(tmp_path):
    results = _training_results()
    path = save_results(results, tmp_path / "a")
    again = load_results(path)
    assert again == results
    forward_twin = dict(_points(results, workload=FORWARD, backend="cython", n=512)[0])
    backward = _points(results, workload=FORWARD_BACKWARD, backend="cython", n=512, heads=8,
                       causal=False)[0]
    assert point_key(forward_twin)[:-1] == point_key(backward)[:-1]  # same but the workload
    slower = copy.deepcopy(results)
    for point in _points(slower, workload=FORWARD_BACKWARD, backend="cython"):
        point["median_s"] *= 1.5
        point["gflops"] /= 1.5
    comparison = compare_results(results, slower)
    ratios = {(r["workload"], r["backend"]): r["time_ratio"] for r in comparison["rows"]}
    assert ratios[FORWARD, "cython"] == 1.0
    assert ratios[FORWARD_BACKWARD, "cython"] == pytest.approx(1.5)
    assert {r["heads"] for r in regressions(comparison, 1.1)} == {8, 1}
    assert "fwd+bwd cython" in format_comparison(comparison)


def test_schema_2_results_load_as_forward_points(tmp_path):
    old = _passing_results()
    old["schema_version"] = 2
    for point in old["points"]:
        del point["workload"]
    (tmp_path / "results.json").write_text(json.dumps(old))
    results = load_results(tmp_path)
    assert results["schema_version"] == SCHEMA_VERSION == 6
    assert {p["workload"] for p in results["points"]} == {FORWARD}
    report = render_markdown(results)
    assert "## Forward + backward" not in report and report.count("| 512 | cython |") == 1


@pytest.mark.parametrize("name", ["backward_time", "backward_speedup"])
def test_forward_backward_plots_have_a_panel_per_shape_and_mask(name, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.container import ErrorbarContainer

    from fastattn.bench import _plots

    figure = getattr(_plots, f"plot_{name}")(_training_results(), tmp_path / f"{name}.png")
    axes = [ax for ax in figure.axes if ax.get_xlabel()]
    assert sorted(ax.get_title() for ax in axes) == [
        "B=1, H=1, causal mask", "B=1, H=1, no mask", "B=1, H=8, causal mask",
        "B=1, H=8, no mask"]
    assert len(figure.legends) == 1 and all(ax.get_legend() is None for ax in axes)
    legend_box = figure.legends[0].get_window_extent()
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    for ax in axes:
        assert not legend_box.overlaps(ax.get_window_extent())
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == (3 if name == "backward_time" else 2)  # torch is the 1x line
    if name == "backward_speedup":
        assert labels == ["cython", "numba", "torch (= 1×)"]
        medians = {c.get_label(): list(c.lines[0].get_ydata()) for c in axes[0].containers}
        assert medians == {"cython": pytest.approx([2.0, 2.0]),
                           "numba": pytest.approx([1.25, 1.25])}
    else:
        assert labels == ["torch", "cython", "numba"]
    assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_draw_plots_picks_the_plots_of_what_ran(tmp_path):
    pytest.importorskip("matplotlib")
    from fastattn.bench._plots import draw_plots

    both = [name for _, name in draw_plots(_training_results(), tmp_path)]
    assert both == list(PNGS) + ["backward_speedup.png"]
    only = _training_results()
    only["points"] = [p for p in only["points"] if p.get("workload") == FORWARD_BACKWARD
                      and p["backend"] != "torch"]
    assert [name for _, name in draw_plots(only, tmp_path)] == ["backward_time.png"]


def test_plan_interleaves_torch_and_adds_a_single_head_series():
    config = SweepConfig(sizes=(64,), backends=("naive", "numba", "torch"), threads=1,
                         memory_budget_gib=1.0, causal=(False, True), backward_sizes=(32, 64))
    points = plan_points(config)
    forward = [p for p in points if p["workload"] == FORWARD]
    backward = [p for p in points if p["workload"] == FORWARD_BACKWARD]
    assert points == forward + backward and len(forward) == 2 * 3
    assert len(backward) == 2 * 2 * 2 * 2  # shapes x masks x sizes x (numba, torch)
    assert [(p["heads"], p["causal"], p["n"], p["backend"]) for p in backward[:4]] == [
        (8, False, 32, "numba"), (8, False, 32, "torch"),
        (8, False, 64, "numba"), (8, False, 64, "torch")]
    assert {(p["batch"], p["heads"]) for p in backward} == {(1, 8), (1, 1)}
    assert all(p["status"] == "planned" and "naive_bytes_needed" not in p for p in backward)
    assert backward[0]["flops"] == training_flops(Shape(1, 8, 32, 32, 64))
    none = SweepConfig(sizes=(64,), backends=("numba",), threads=1, memory_budget_gib=1.0)
    assert {p["workload"] for p in plan_points(none)} == {FORWARD}


def test_plan_skips_a_backend_without_a_backward(monkeypatch):
    from fastattn import _backward

    runners = dict(_backward.backward_runners())
    runners["numba"] = (None, "its backward kernel cannot be imported: test")
    monkeypatch.setattr(_backward, "backward_runners", lambda: runners)
    config = SweepConfig(sizes=(), backends=("numba",), threads=1, memory_budget_gib=1.0,
                         causal=(False,), backward_sizes=(64,), backward_shapes=((1, 1),))
    (point,) = plan_points(config)
    assert point["status"] == "skipped"
    assert point["reason"] == "no backward: its backward kernel cannot be imported: test"


def test_check_gradients_catches_a_wrong_gradient():
    shape = Shape(1, 3, 16, 16, 8)
    inputs = make_inputs(shape) + (make_upstream_gradient(shape),)
    backend = "numba" if "numba" in available_backends() else "naive"
    dq, dk, dv = make_training_step(backend, *inputs, causal=True)()
    error, heads = check_gradients((dq, dk, dv), *inputs, True, backend)
    assert heads == 3 and error < GRADIENT_TOLERANCE["float32"]
    dk[0, 2, 5, 1] += 1e-2 * np.abs(dk[0, 2]).max()  # the last head: the check sees it
    with pytest.raises(AssertionError, match=f"{backend}: gradients differ"):
        check_gradients((dq, dk, dv), *inputs, True, backend)


def test_gradient_check_covers_fewer_heads_as_n_grows():
    assert gradient_check_heads(Shape(1, 8, 1024, 1024, 64)) == 4
    assert gradient_check_heads(Shape(1, 8, 4096, 4096, 64)) == 0
    shape = Shape(1, 2, 8, 8, 4)
    inputs = make_inputs(shape) + (make_upstream_gradient(shape),)
    grads = make_training_step("naive", *inputs)()
    big = [np.zeros((1, 2, 4096, 4), np.float32)] * 4  # never looked at: no head fits
    assert check_gradients(grads, *big, False, "naive") == (None, 0)


def test_torch_training_step_matches_the_naive_gradient():
    pytest.importorskip("torch")
    shape = Shape(1, 2, 24, 24, 8)
    inputs = make_inputs(shape) + (make_upstream_gradient(shape),)
    step = make_training_step("torch", *inputs, causal=True, threads=1)
    first = step()
    again = step()  # gradients are replaced, not accumulated
    error, heads = check_gradients(again, *inputs, True, "torch")
    assert heads == 2 and error < GRADIENT_TOLERANCE["float32"]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


# --- the command line ----------------------------------------------------------------------

def _help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_bench_help_shows_compare_as_optional(capsys):
    text = _help(["bench", "--help"], capsys)
    usage = text[:text.index("\n\n")]
    assert usage.startswith("usage: fastattn bench [options]")
    assert "fastattn bench compare A B [--max-slowdown PERCENT]" in usage
    assert "[compare]" in text and "optional action" in text
    assert "--reference-size" in text and "ceiling" not in text
    assert _help(["bench", "compare", "--help"], capsys).startswith(
        "usage: fastattn bench compare [-h] [--max-slowdown PERCENT] A B")
    assert build_parser().parse_args(["bench", "--quick"]).action is None
    assert "--backward {yes,no,only}" in text and "--backward-sizes" in text


@pytest.mark.parametrize("argv, sizes, backward, reference", [
    (["--quick"], (128, 256, 512, 1024, 2048), (512, 1024), 2048),
    ([], tuple(2**p for p in range(7, 15)), tuple(2**p for p in range(9, 15)), 4096),
    (["--quick", "--sizes", "256,512"], (256, 512), (256, 512), 2048),
    (["--max-n", "512", "--backward-sizes", "64"], (128, 256, 512), (64,), 4096),
    (["--quick", "--backward", "no"], (128, 256, 512, 1024, 2048), (), 2048),
    (["--backward", "only"], (), tuple(2**p for p in range(9, 15)), 0),
])
def test_backward_options_choose_the_sizes(argv, sizes, backward, reference):
    from fastattn.bench._command import config_from_args

    config = config_from_args(build_parser().parse_args(["bench", "--backends", "naive"]
                                                        + argv))
    assert (config.sizes, config.backward_sizes, config.reference_size) == \
        (sizes, backward, reference)


# --- import structure ----------------------------------------------------------------------

MINE = ("fastattn.bench", "fastattn._cli", "fastattn.viz", "fastattn._viz_")


def _imports(path, name):
    """The fastattn modules ``path`` (module ``name``) imports anywhere, functions included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = (f"{base}.{node.module}" if node.module else base) if node.level \
                else node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith("fastattn")}


def test_no_import_cycle_through_bench_cli_or_viz():
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {name: {m for m in _imports(path, name) if m in modules and m != name}
             for name, path in modules.items()}

    def reaches(start, goal):
        seen, stack = set(), [start]
        while stack:
            for nxt in graph[stack.pop()]:
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    # A package imports its submodules lazily by design (fastattn.bench.__getattr__);
    # a submodule importing its own package's __init__ is not counted as a cycle.
    cycles = [name for name in graph if name.startswith(MINE)
              and any(reaches(other, name) for other in graph[name]
                      if not name.startswith(other + "."))]
    assert cycles == []


# --- models in transformers ----------------------------------------------------------------

TINY_LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1)


def _models_needed():
    from fastattn.bench._models import LLAMA_PREFILL, models_unavailable

    reason = models_unavailable(LLAMA_PREFILL)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def model_results():
    """A tiny sweep of the tiny-Llama prefill (shrunk further) at N = 16, every implementation."""
    _models_needed()
    config = SweepConfig(sizes=(), backends=("naive",), threads=1, memory_budget_gib=1.0,
                         repeats=2, min_time_s=0, time_budget_s=1, reference_size=0,
                         models=("llama-prefill",), model_sizes={"llama-prefill": (16,)},
                         model_config=TINY_LLAMA)
    return run_sweep(config, progress=False)


def test_model_sweep_times_every_implementation(model_results):
    points = model_results["points"]
    assert [(p["workload"], p["backend"], p["n"]) for p in points] == [
        ("llama-prefill", name, 16) for name in ("fastattn", "sdpa", "eager")]
    for p in points:
        assert p["status"] == "ok", p["reason"]
        assert p["tokens_per_s"] == pytest.approx(16 / p["median_s"])
        assert p["gflops"] is None and p["peak_bytes"] is not None
        assert min(p["times_s"]) == p["min_s"] <= p["median_s"] <= p["max_s"]
    assert model_results["settings"]["model_sizes"] == {"llama-prefill": [16]}


def test_model_report_has_a_table_and_a_plot(model_results, tmp_path):
    from fastattn.bench._report import MODEL_COLUMNS, write_report

    written = {path.name for path in write_report(model_results, tmp_path,
                                                  plots=_has_matplotlib())}
    report = (tmp_path / "report.md").read_text()
    assert "## Models" in report and "### Tiny Llama: prefill of N tokens" in report
    assert "| " + " | ".join(MODEL_COLUMNS) + " |" in report
    assert report.count("| 16 | sdpa | ") == 1 and "| 1× |" in report
    assert "## float32" not in report  # no forward points: no forward tables
    if _has_matplotlib():
        assert "models.png" in written and "](models.png)" in report
    again = load_results(tmp_path)
    assert [point_key(p) for p in again["points"]] == \
        [point_key(p) for p in model_results["points"]]
    comparison = compare_results(again, model_results)
    assert {row["time_ratio"] for row in comparison["rows"]} == {1.0}
    assert {row["gflops_ratio"] for row in comparison["rows"]} == {None}
    assert "prefill fastattn" in format_comparison(comparison)


def _has_matplotlib():
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _model_results():
    """Hand-made model points: fastattn twice as fast as sdpa, eager skipped at 1024."""
    points = []
    for workload, sizes, tokens in (("llama-prefill", (512, 1024), None),
                                    ("llama-decode", (512,), 64),
                                    ("minilm-encode", (128,), None)):
        for n in sizes:
            for backend, seconds in (("fastattn", 0.1), ("sdpa", 0.2), ("eager", 0.4)):
                point = dict(workload=workload, backend=backend, n=n, causal=True,
                             dtype="float32", batch=1, heads=8, head_dim=32, threads=2,
                             flops=None, tokens=tokens or n, status="ok", reason=None,
                             median_s=seconds, times_s=[seconds * 0.9, seconds, seconds * 1.2],
                             gflops=None, tokens_per_s=(tokens or n) / seconds,
                             peak_bytes=2**20, rss_bytes=2**20, traced_bytes=2**10)
                if backend == "eager" and n == 1024:
                    point.update(status="failed", reason="killed by signal 9")
                points.append(point)
    return {"schema": "fastattn-bench", "schema_version": SCHEMA_VERSION,
            "settings": {"threads": 2}, "points": points}


def test_model_table_gives_the_speedup_over_sdpa_and_its_range():
    from fastattn.bench._report import _model_lines

    text = "\n".join(_model_lines(_model_results()))
    # fastattn: sdpa 0.2 s / 0.1 s; range sdpa fastest / own slowest .. slowest / fastest
    assert "| 512 | fastattn | 100 | 90 | 120 | 3 | 5,120 | 4,267–5,689 | 2× (1.5–2.67) |" \
        in text
    assert "| 1024 | eager | failed: killed by signal 9 |" in text
    assert "### Tiny Llama: 64 tokens decoded after an N-token prompt" in text
    assert "| 512 | fastattn | 100 | 90 | 120 | 3 | 640 |" in text  # 64 tokens / 0.1 s


def test_models_plot_has_a_panel_per_workload_bars_and_one_legend(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.container import ErrorbarContainer

    from fastattn.bench._plots import draw_plots, plot_models

    figure = plot_models(_model_results(), tmp_path / "models.png")
    axes = [ax for ax in figure.axes if ax.get_xlabel()]
    assert [ax.get_title() for ax in axes] == ["Tiny Llama prefill", "Tiny Llama decode",
                                               "MiniLM encode"]
    assert len(figure.legends) == 1 and all(ax.get_legend() is None for ax in axes)
    legend_box = figure.legends[0].get_window_extent()
    for ax in axes:
        assert not legend_box.overlaps(ax.get_window_extent())
        bars = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
        assert set(bars) == {"fastattn", "sdpa", "eager"}
    prefill = {c.get_label(): list(c.lines[0].get_ydata()) for c in axes[0].containers}
    assert prefill["fastattn"] == pytest.approx([5120, 10240])
    assert prefill["eager"] == pytest.approx([1280])  # the failed point is an x, not a marker
    assert [name for _, name in draw_plots(_model_results(), tmp_path)] == ["models.png"]


def test_model_runners_decode_and_encode():
    _models_needed()
    from fastattn.bench._models import (DECODED, MINILM_ENCODE, build_model, model_runner,
                                        models_unavailable)

    llama = build_model("llama-decode", "fastattn", **TINY_LLAMA)
    assert model_runner("llama-decode", llama, 8)().shape == (1, 8 + DECODED)
    assert model_runner("llama-prefill", llama, 8)().shape == (1, 8, TINY_LLAMA["vocab_size"])
    if models_unavailable(MINILM_ENCODE) is None:
        encoded = model_runner(MINILM_ENCODE, build_model(MINILM_ENCODE, "fastattn"), 16)()
        assert encoded.shape == (1, 16, 384)


def test_plan_skips_models_that_cannot_run(monkeypatch):
    from fastattn.bench import _sweep

    monkeypatch.setattr(_sweep, "models_unavailable", lambda workload: "torch is not installed")
    config = SweepConfig(sizes=(), backends=("naive",), threads=1, memory_budget_gib=1.0,
                         models=("llama-decode", "minilm-encode"))
    points = plan_points(config)
    assert [(p["workload"], p["n"], p["tokens"]) for p in points[::3]] == [
        ("llama-decode", 512, 64), ("minilm-encode", 128, 128), ("minilm-encode", 256, 256),
        ("minilm-encode", 512, 512)]
    assert {(p["status"], p["reason"]) for p in points} == {("skipped", "torch is not installed")}
    with pytest.raises(ValueError, match="models must be among"):
        plan_points(SweepConfig(sizes=(), backends=(), threads=1, memory_budget_gib=1.0,
                                models=("gpt",)))


@pytest.mark.parametrize("option, sizes, models", [
    ("no", (128, 256, 512, 1024, 2048), ()),
    ("yes", (128, 256, 512, 1024, 2048), ("llama-prefill", "llama-decode", "minilm-encode")),
    ("only", (), ("llama-prefill", "llama-decode", "minilm-encode")),
])
def test_models_option(option, sizes, models):
    from fastattn.bench._command import config_from_args

    config = config_from_args(build_parser().parse_args(
        ["bench", "--quick", "--backends", "naive", "--models", option]))
    assert (config.sizes, config.models) == (sizes, models)
    assert (config.backward_sizes == ()) == (option == "only")


def test_schema_3_results_load_as_the_current_version(tmp_path):
    old = _passing_results()
    old["schema_version"] = 3
    (tmp_path / "results.json").write_text(json.dumps(old))
    results = load_results(tmp_path)
    assert results["schema_version"] == SCHEMA_VERSION == 6
    assert "## Models" not in render_markdown(results)


def test_the_hf_suite_uses_the_package_models():
    """bench/test_hf_speed.py builds its models with fastattn.bench._models, not its own."""
    suite = PACKAGE_DIR.parent / "bench" / "test_hf_speed.py"
    if not suite.is_file():
        pytest.skip("no bench/ suites next to this fastattn")
    text = suite.read_text()
    assert "fastattn.bench._models" in text and "LlamaConfig(" not in text
