"""Distributed attention over keys and values that do not fit in one worker.

Workload: one batch, 8 heads, 256 queries of D = 64 against Lk = 262144 keys, float32:
k and v are 512 MiB each, 1 GiB together.  They are generated inside the dask graph
(``dask.array.random``, 4096 keys per chunk), so neither the client nor any single
worker ever holds them whole.  The run uses :func:`fastattn.dask.local_cluster` with 2
worker processes of 1 thread, each limited to 300 MiB.

``extra_info`` records the peak resident memory (RSS high-water mark) of each worker
during the computation next to that of the single-machine run, which materialises the
same k and v in one process and calls :func:`fastattn.attention` (run in a child
process so that its peak is its own), and the largest difference between the two
results.  The timed region is the distributed computation, K/V generation included.

Run with ``pytest bench/test_dask_memory.py`` (a few tens of seconds on 2 cores);
``FASTATTN_BENCH_DASK_KEYS`` changes the key length.
"""

import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("dask.array")
pytest.importorskip("distributed")

KEYS = int(os.environ.get("FASTATTN_BENCH_DASK_KEYS", 262144))
SHAPE = dict(batch=1, heads=8, queries=256, keys=KEYS, head_dim=64, key_chunk=4096,
             seed=2024)
MEMORY_LIMIT = "300MiB"
MEMORY_LIMIT_BYTES = 300 * 2**20

# The lazy inputs, as source: the benchmark and the single-machine child build the same
# arrays (same seeds, same chunks, so the same numbers) from it.
LAZY_INPUTS = """
import dask.array as da
import numpy as np

def lazy_inputs(batch, heads, queries, keys, head_dim, key_chunk, seed):
    generate = da.random.default_rng(seed)
    q = generate.standard_normal((batch, heads, queries, head_dim), dtype=np.float32,
                                 chunks=(batch, heads, queries, head_dim))
    kv_chunks = (batch, heads, key_chunk, head_dim)
    k = generate.standard_normal((batch, heads, keys, head_dim), dtype=np.float32,
                                 chunks=kv_chunks)
    v = generate.standard_normal((batch, heads, keys, head_dim), dtype=np.float32,
                                 chunks=kv_chunks)
    return q, k, v
"""

# The single-machine run: k and v stored chunk by chunk into NumPy arrays (no
# concatenation copies), then one fastattn.attention call on all of it.
SINGLE_MACHINE = LAZY_INPUTS + """
import json, sys, time
import dask, fastattn
from fastattn.bench._memory import _maxrss_bytes

shape, out_path = json.loads(sys.argv[1]), sys.argv[2]
lazy = lazy_inputs(**shape)
arrays = [np.empty(x.shape, dtype=x.dtype) for x in lazy]
start = time.perf_counter()
da.store(lazy, arrays, scheduler="sync")
generated = time.perf_counter()
out = fastattn.attention(*arrays)
done = time.perf_counter()
np.save(out_path, out)
print(json.dumps({"peak_rss_bytes": _maxrss_bytes(), "generate_s": generated - start,
                  "attention_s": done - generated,
                  "input_bytes": sum(a.nbytes for a in arrays)}))
"""


def _lazy_inputs():
    namespace = {}
    exec(compile(LAZY_INPUTS, "lazy_inputs", "exec"), namespace)
    return namespace["lazy_inputs"](**SHAPE)


def _single_machine(tmp_path):
    out_path = tmp_path / "single.npy"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", SINGLE_MACHINE, json.dumps(SHAPE),
                           str(out_path)], capture_output=True, text=True, env=env,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return np.load(out_path), report


def _worker_peaks(client):
    """Each worker's RSS high-water mark since the last reset (lifetime peak if no reset)."""
    from fastattn.bench._memory import _maxrss_bytes, _status_bytes

    try:
        return client.run(_status_bytes, "VmHWM")
    except OSError:
        return client.run(_maxrss_bytes)


def test_dask_attention_beyond_worker_memory(benchmark, tmp_path):
    import fastattn.dask
    from fastattn.bench._memory import _reset_high_water_mark, current_rss

    q, k, v = _lazy_inputs()
    kv_bytes = k.nbytes + v.nbytes
    assert kv_bytes > 2 * MEMORY_LIMIT_BYTES, "k and v must not fit in one worker"
    out = fastattn.dask.attention(q, k, v)
    n_partials = sum(len(layer) for name, layer in out.dask.layers.items()
                     if name.startswith("fastattn-partial-"))

    cluster, client = fastattn.dask.local_cluster(
        n_workers=2, threads_per_worker=1, memory_limit=MEMORY_LIMIT,
        silence_logs=logging.ERROR)
    try:
        # load the kernels in every worker before the measurement
        small = [np.ones((1, 8, 64, 64), dtype=np.float32)] * 3
        client.run(fastattn.attention, *small)
        client.run(_reset_high_water_mark)
        baseline = client.run(current_rss)
        started = time.perf_counter()
        result = benchmark.pedantic(out.compute, rounds=1, iterations=1)
        elapsed = time.perf_counter() - started
        peaks = _worker_peaks(client)
    finally:
        client.close(timeout=60)
        cluster.close(timeout=60)

    single, single_report = _single_machine(tmp_path)
    error = float(np.max(np.abs(result.astype(np.float64) - single)))
    assert error < 1e-4, error
    peak_worker = max(peaks.values())
    assert peak_worker < MEMORY_LIMIT_BYTES, (peaks, MEMORY_LIMIT_BYTES)
    assert single_report["peak_rss_bytes"] > kv_bytes

    mib = 2**20
    benchmark.group = "dask: K/V larger than a worker's memory"
    benchmark.extra_info.update({
        **{f"shape_{name}": value for name, value in SHAPE.items()},
        "dtype": "float32", "kv_bytes": kv_bytes, "kv_mib": kv_bytes / mib,
        "n_workers": 2, "threads_per_worker": 1, "worker_memory_limit": MEMORY_LIMIT,
        "n_partial_tasks": n_partials,
        "distributed_s": elapsed,
        "worker_baseline_rss_mib": {a: b / mib for a, b in baseline.items()},
        "worker_peak_rss_mib": {a: b / mib for a, b in peaks.items()},
        "max_worker_peak_rss_mib": peak_worker / mib,
        "single_machine_peak_rss_mib": single_report["peak_rss_bytes"] / mib,
        "single_machine_generate_s": single_report["generate_s"],
        "single_machine_attention_s": single_report["attention_s"],
        "max_abs_err_vs_single_machine": error,
    })
    print(f"\nK/V {kv_bytes / mib:.0f} MiB; worker peaks "
          f"{', '.join(f'{b / mib:.0f}' for b in peaks.values())} MiB (limit {MEMORY_LIMIT}); "
          f"single machine {single_report['peak_rss_bytes'] / mib:.0f} MiB; "
          f"{elapsed:.1f} s distributed, {single_report['generate_s']:.1f} s + "
          f"{single_report['attention_s']:.1f} s single; max |diff| {error:.2e}")
