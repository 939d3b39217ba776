"""Run-time behaviour of the compiled backends: fork, Ctrl-C, BLAS state, concurrent callers.

Each test is the check for a defect once found (issue 9): a forked child that hung, a
Ctrl-C that waited for the kernel to end, BLAS left on one thread by concurrent calls,
results that differed under concurrent callers, and ``num_threads`` taken uncapped.
"""

import functools
import multiprocessing
import select
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastattn
from fastattn import _config, _tiled

from helpers import COMPILED_BACKENDS, assert_close

needs_two_cores = pytest.mark.skipif(_config.available_cores() < 2,
                                     reason="needs 2 cores for a 2-worker plan")


@pytest.fixture
def plans(monkeypatch):
    """The plans the driver makes during the test, in order."""
    made = []

    def recording_make_plan(*args, **kwargs):
        plan = make_plan(*args, **kwargs)
        made.append(plan)
        return plan

    make_plan = _tiled.make_plan
    monkeypatch.setattr(_tiled, "make_plan", recording_make_plan)
    return made


def inputs(shape, dtype=np.float32, seed=0):
    """Fixed standard-normal ``q, k, v`` of one shape."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape).astype(dtype) for _ in range(3))


# --- fork -----------------------------------------------------------------------------------

@needs_two_cores
def test_forked_children_compute_after_a_parallel_call(compiled_backend, plans):
    """A "fork" Pool works after a 2-worker call, and its children run the kernels serially."""
    with fastattn.config_context(num_threads=2):
        fastattn.attention(*inputs((1, 8, 512, 64)), backend=compiled_backend)
    assert max(plan.n_workers for plan in plans) == 2  # the parent's thread team did start
    problems = [inputs((2, 3, 40, 16), np.float64, seed) for seed in range(4)]
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        results = pool.starmap_async(
            functools.partial(fastattn.attention, backend=compiled_backend), problems).get(60)
        budgets = pool.map_async(_config.thread_budget, [2, 2]).get(60)
    except multiprocessing.TimeoutError:
        pytest.fail(f"a forked child hung after a parallel {compiled_backend} call")
    finally:
        pool.terminate()
        pool.join()
    for problem, result in zip(problems, results):
        assert_close(result, fastattn.attention(*problem, backend="naive"))
    assert budgets == [1, 1]


# --- Ctrl-C ---------------------------------------------------------------------------------

LONG_CALL = """
import signal, sys, time
import numpy as np, fastattn

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored

backend = sys.argv[1]
warm = np.ones((1, 1, 64, 64))
fastattn.attention(warm, warm, warm, backend=backend)  # compiled (or loaded) before the clock
q = np.random.default_rng(0).standard_normal((1, 8, 32768, 64))
print("started", flush=True)
start = time.perf_counter()
fastattn.attention(q, q, q, backend=backend)  # float64, 13 s (cython) to 58 s (numba) here
print("finished in", time.perf_counter() - start, "s", flush=True)
"""


def wait_for_line(process, text, timeout):
    """Read the child's stdout until a line holds ``text``; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
        line = process.stdout.readline() if ready else ""
        if text in line:
            return True
        if ready and not line:  # end of output: the child died
            return False
    return False


def test_ctrl_c_interrupts_a_long_call(compiled_backend, tmp_path):
    process = subprocess.Popen([sys.executable, "-c", LONG_CALL, compiled_backend],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path)  # the installed fastattn, not a source checkout
    try:
        assert wait_for_line(process, "started", timeout=60), process.stderr.read()
        time.sleep(1.5)
        assert process.poll() is None, "the child ended before the signal"
        process.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{compiled_backend}: no exit within 3 s of SIGINT")
        elapsed = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stdout, stderr = process.stdout.read(), process.stderr.read()
    assert "finished" not in stdout, f"the call ended before the signal: {stdout}"
    assert process.returncode != 0 and "KeyboardInterrupt" in stderr, stderr
    assert elapsed < 3


# --- BLAS state -----------------------------------------------------------------------------

def blas_threads():
    from threadpoolctl import threadpool_info

    return sorted((lib["filepath"], lib["num_threads"]) for lib in threadpool_info()
                  if lib["user_api"] == "blas")


@pytest.mark.skipif("numba" not in COMPILED_BACKENDS, reason="numba backend unavailable")
@needs_two_cores
def test_concurrent_numba_calls_leave_blas_threads_as_they_were(plans):
    q, k, v = inputs((1, 2, 128, 64))  # two tasks: two workers, each calling BLAS
    fastattn.attention(q, k, v, backend="numba")  # loads SciPy's BLAS, as the kernels do
    before = blas_threads()
    assert max(threads for _, threads in before) > 1, "BLAS already on one thread: no test"

    def calls():
        for _ in range(20):
            fastattn.attention(q, k, v, backend="numba")

    with ThreadPoolExecutor(4) as executor:
        for future in [executor.submit(calls) for _ in range(4)]:
            future.result()
    assert max(plan.n_workers for plan in plans) == 2
    assert blas_threads() == before


# --- concurrent callers ---------------------------------------------------------------------

def test_concurrent_callers_get_bit_identical_results(compiled_backend):
    q, k, v = inputs((1, 8, 256, 64))
    expected = fastattn.attention(q, k, v, backend=compiled_backend)

    def calls():
        return [fastattn.attention(q, k, v, backend=compiled_backend) for _ in range(50)]

    with ThreadPoolExecutor(4) as executor:
        results = [out for future in [executor.submit(calls) for _ in range(4)]
                   for out in future.result()]
    differing = [np.abs(out - expected).max() for out in results
                 if not np.array_equal(out, expected)]
    assert not differing, f"{len(differing)} of {len(results)} differ, up to {max(differing)}"


# --- num_threads cap ------------------------------------------------------------------------

def test_num_threads_is_capped_at_the_cores(compiled_backend, plans):
    q, k, v = inputs((1, 8, 1024, 64))
    with fastattn.config_context(num_threads=4096):
        out = fastattn.attention(q, k, v, backend=compiled_backend)
    assert_close(out, fastattn.attention(q, k, v, backend="naive"))
    assert plans and len(plans[0].tasks) > _config.available_cores()  # the work is not the cap
    assert max(plan.n_workers for plan in plans) <= _config.available_cores()
