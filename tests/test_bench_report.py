"""The benchmark report machinery (``fastattn bench``) end to end, on tiny sizes.

These tests check that the sweep runs, skips and records what it should, that the
report files are written and read back, and that two reports compare correctly.
They do not judge speed: benchmarks live in ``bench/``.
"""

import copy
import io
import json

import numpy as np
import pytest

from fastattn._backends import available_backends
from fastattn._cli import main
from fastattn.bench import SCHEMA_VERSION, compare_results, load_results, save_results
from fastattn.bench._compare import format_comparison, regressions
from fastattn.bench._memory import measure_peak
from fastattn.bench._results import point_key
from fastattn.bench._sweep import SweepConfig, plan_points, run_child, run_sweep
from fastattn.bench._workload import Shape, attention_flops, naive_bytes_needed

HEADS, HEAD_DIM = 2, 8
# Naive at N=16 needs 16 KiB of scores, at N=32 64 KiB: a 32 KiB budget runs one, skips one.
TINY_BUDGET_GIB = 32 * 1024 / 2**30
PNGS = ("time.png", "memory.png", "gflops.png", "speedup.png")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """One tiny sweep through the command line: N=16,32, naive+numba, both masks."""
    if "numba" not in available_backends():
        pytest.skip("the numba backend is not available")
    out = tmp_path_factory.mktemp("bench") / "report"
    status = main(["bench", "--sizes", "16,32", "--backends", "naive,numba",
                   "--heads", str(HEADS), "--head-dim", str(HEAD_DIM), "--repeats", "2",
                   "--min-time", "0",
                   "--ceiling-size", "64", "--memory-budget", repr(TINY_BUDGET_GIB),
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
    assert results["ceiling"]["gflops"] > 0
    assert len(results["points"]) == 2 * 2 * 2  # backends x sizes x masks
    for point in _points(results, backend="numba"):
        assert point["status"] == "ok"
        assert point["median_s"] > 0 and len(point["times_s"]) in (1, 2)
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


def test_compare_with_itself_is_one(report_dir):
    comparison = compare_results(report_dir, report_dir / "results.json")
    assert len(comparison["rows"]) == 6  # the naive N=32 points ran in neither
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
                         repeats=1, ceiling_size=0)
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
    result, memory = measure_peak(lambda: np.ones(2_000_000))
    assert result.shape == (2_000_000,)
    assert memory["traced_bytes"] >= 16_000_000
    assert memory["rss_method"] in ("hwm-reset", "psutil-sampling", "ru_maxrss", "unavailable")
    if memory["rss_method"] == "hwm-reset":
        assert memory["rss_bytes"] >= 15_000_000


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
