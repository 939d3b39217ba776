"""fastattn.dask.attention: blocked attention over dask arrays equals fastattn.attention.

Every result is compared with ``fastattn.attention`` on the same NumPy data, in float64
with a tight tolerance.  The graph tests check that chunk pairs removed by the causal or
window band have no task at all; one test runs on a real two-process LocalCluster.
"""

import itertools
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fastattn
from fastattn._contract import Band
from helpers import BACKENDS

try:
    import dask
    import dask.array as da
    from dask.core import get_dependencies
except ImportError:  # the tests that need dask are skipped; the import tests still run
    dask = da = None

ROOT = pathlib.Path(__file__).resolve().parents[1]
requires_dask = pytest.mark.skipif(da is None, reason="needs the dask extra")
TIGHT = dict(rtol=1e-10, atol=1e-10)


def _python_env():
    """Environment for a child Python that imports this checkout's fastattn."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_python_env(), cwd="/", timeout=120)


# ---------------------------------------------------------------- imports


def test_import_fastattn_does_not_import_dask():
    done = _run_python("import sys, fastattn; fastattn.attention([[1.0]], [[1.0]], [[1.0]]); "
                       "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                       "('dask', 'distributed')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_dask_says_how_to_install_it():
    done = _run_python("import sys; sys.modules['dask'] = None\n"
                       "try:\n    import fastattn.dask\n"
                       "except ImportError as error:\n    print(error)\n")
    assert done.returncode == 0, done.stderr
    assert "pip install 'fastattn[dask]'" in done.stdout


# ---------------------------------------------------------------- helpers


def lazy(array, chunks):
    return da.from_array(array, chunks=chunks)


def expected(q, k, v, mask=None, **options):
    return fastattn.attention(q, k, v, mask, return_lse=True, **options)


def check(dask_qkv, numpy_qkv, mask=None, numpy_mask=None, **options):
    """fastattn.dask.attention on the dask arrays == fastattn.attention on the NumPy ones."""
    import fastattn.dask

    out, lse = fastattn.dask.attention(*dask_qkv, mask, return_lse=True, **options)
    assert isinstance(out, da.Array) and isinstance(lse, da.Array)
    got_out, got_lse = dask.compute(out, lse)
    want_out, want_lse = expected(*numpy_qkv, numpy_mask, **options)
    assert got_out.shape == want_out.shape and got_out.dtype == want_out.dtype
    assert got_lse.shape == want_lse.shape and got_lse.dtype == want_lse.dtype
    np.testing.assert_array_equal(np.isneginf(got_lse), np.isneginf(want_lse))
    np.testing.assert_allclose(got_out, want_out, **TIGHT)
    np.testing.assert_allclose(got_lse, want_lse, **TIGHT)
    return got_out, got_lse


def qkv(rng, batch=(2,), hq=4, hk=2, lq=24, lk=36, d=8, dv=6, dtype=np.float64):
    batch = tuple(batch)
    return (rng.standard_normal(batch + (hq, lq, d)).astype(dtype),
            rng.standard_normal(batch + (hk, lk, d)).astype(dtype),
            rng.standard_normal(batch + (hk, lk, dv)).astype(dtype))


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


# ---------------------------------------------------------------- chunked axes

CHUNKINGS = {
    # (q chunks, k chunks, v chunks) for q (2, 4, 24, 8), k (2, 2, 36, 8), v (2, 2, 36, 6)
    "single": ((2, 4, 24, 8), (2, 2, 36, 8), (2, 2, 36, 6)),
    "batch": ((1, 4, 24, 8), (1, 2, 36, 8), (2, 2, 36, 6)),
    "heads": ((2, 1, 24, 8), (2, 1, 36, 8), (2, 2, 36, 6)),
    "queries": ((2, 4, 7, 8), (2, 2, 36, 8), (2, 2, 36, 6)),
    "keys": ((2, 4, 24, 8), (2, 2, 10, 8), (2, 2, 7, 6)),
    "features": ((2, 4, 24, 3), (2, 2, 36, 5), (2, 2, 36, 4)),
    "everything": ((1, 1, 5, 3), (1, 1, 8, 8), (2, 1, 11, 2)),
}


@requires_dask
@pytest.mark.parametrize("name", list(CHUNKINGS))
@pytest.mark.parametrize("causal", [False, "upper_left", "lower_right"])
def test_chunked_inputs_match_numpy(rng, name, causal):
    arrays = qkv(rng)
    lazies = [lazy(x, c) for x, c in zip(arrays, CHUNKINGS[name])]
    check(lazies, arrays, causal=causal)


@requires_dask
@pytest.mark.parametrize("lq, lk", [(24, 36), (36, 24), (1, 40), (30, 30)])
@pytest.mark.parametrize("causal", ["upper_left", "lower_right"])
@pytest.mark.parametrize("window", [None, (5, 0), (3, 4), (0, None), (None, 2), (0, 0)])
def test_causal_and_window_alignment(rng, lq, lk, causal, window):
    """Lq != Lk: the band is aligned on the whole sequences, not on each chunk."""
    arrays = qkv(rng, batch=(1,), hq=2, hk=1, lq=lq, lk=lk)
    lazies = [lazy(arrays[0], (1, 2, 7, 8)), lazy(arrays[1], (1, 1, 6, 8)),
              lazy(arrays[2], (1, 1, 9, 6))]
    check(lazies, arrays, causal=causal, window=window)


@requires_dask
@pytest.mark.parametrize("window", [(4, 2), (0, 0), (None, 3), (6, None)])
def test_window_without_causal(rng, window):
    arrays = qkv(rng, batch=(1,), lq=30, lk=20)
    lazies = [lazy(arrays[0], (1, 2, 4, 8)), lazy(arrays[1], (1, 1, 3, 8)),
              lazy(arrays[2], (1, 2, 5, 6))]
    check(lazies, arrays, window=window)


@requires_dask
def test_float32_and_float16(rng):
    import fastattn.dask

    for dtype in (np.float32, np.float16):
        arrays = qkv(rng, dtype=dtype)
        lazies = [lazy(x, (1, 2, 8, 8)) for x in arrays]
        out, lse = fastattn.dask.attention(*lazies, causal=True, return_lse=True)
        got_out, got_lse = dask.compute(out, lse)
        want_out, want_lse = expected(*arrays, causal=True)
        assert got_out.dtype == want_out.dtype == dtype
        assert got_lse.dtype == want_lse.dtype == np.float32
        tol = 2e-5 if dtype == np.float32 else 2e-3
        np.testing.assert_allclose(got_out.astype(np.float64), want_out.astype(np.float64),
                                   rtol=tol, atol=tol)
        np.testing.assert_allclose(got_lse, want_lse, rtol=tol, atol=tol)


@requires_dask
def test_two_dimensional_and_numpy_inputs(rng):
    import fastattn.dask

    q, k, v = (rng.standard_normal((n, 8)) for n in (20, 30, 30))
    out = fastattn.dask.attention(lazy(q, (6, 8)), lazy(k, (7, 8)), v, causal="lower_right")
    assert out.shape == (20, 8)
    np.testing.assert_allclose(out.compute(), fastattn.attention(q, k, v, causal="lower_right"),
                               **TIGHT)
    out = fastattn.dask.attention(q, k, v)  # plain NumPy in, dask out
    assert isinstance(out, da.Array)
    np.testing.assert_allclose(out.compute(), fastattn.attention(q, k, v), **TIGHT)


@requires_dask
def test_broadcast_batch_axes(rng):
    """k and v shared by every batch entry (batch axis of size 1) are not copied per entry."""
    q = rng.standard_normal((3, 2, 2, 10, 8))
    k = rng.standard_normal((1, 2, 2, 14, 8))
    v = rng.standard_normal((2, 14, 8))
    lazies = [lazy(q, (1, 1, 1, 5, 8)), lazy(k, (1, 2, 1, 7, 8)), lazy(v, (1, 5, 8))]
    check(lazies, (q, k, v), causal=True)


# ---------------------------------------------------------------- grouped-query heads


@requires_dask
@pytest.mark.parametrize("head_chunks, k_head_chunks, want", [
    ((2, 2, 2), (1, 1), (2, 1, 1, 2)),   # chunks straddle groups of 3: split at 3
    ((3, 3), (2,), (3, 3)),              # whole groups: k/v heads follow (1, 1)
    ((1,) * 6, (2,), (1,) * 6),          # inside groups: several chunks read one kv head
    ((6,), (1, 1), (6,)),                # one chunk: k/v heads merged
    ((4, 2), (1, 1), (3, 1, 2)),
])
def test_grouped_query_head_chunks(rng, head_chunks, k_head_chunks, want):
    import fastattn.dask

    arrays = qkv(rng, batch=(1,), hq=6, hk=2, lq=12, lk=16)
    lazies = [lazy(arrays[0], (1, head_chunks, 5, 8)), lazy(arrays[1], (1, k_head_chunks, 6, 8)),
              lazy(arrays[2], (1, 2, 16, 6))]
    out, _ = check(lazies, arrays, causal=True)
    assert fastattn.dask.attention(*lazies).chunks[1] == want


# ---------------------------------------------------------------- masks


@requires_dask
@pytest.mark.parametrize("mask_shape", [(2, 4, 24, 36), (24, 36), (36,), (2, 1, 1, 36),
                                        (4, 24, 1)])
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_chunked_masks(rng, mask_shape, kind):
    arrays = qkv(rng)
    if kind == "bool":
        mask = rng.random(mask_shape) < 0.7
    else:
        mask = np.where(rng.random(mask_shape) < 0.2, -np.inf, rng.standard_normal(mask_shape))
    mask_chunks = tuple(max(1, n // 3) for n in mask_shape)
    lazies = [lazy(arrays[0], (1, 2, 7, 8)), lazy(arrays[1], (2, 1, 10, 8)),
              lazy(arrays[2], (1, 2, 9, 3))]
    check(lazies, arrays, lazy(mask, mask_chunks), mask, causal="lower_right")
    check(lazies, arrays, mask, mask)  # a NumPy mask is converted


@requires_dask
def test_fully_masked_rows_are_zeros_with_lse_minus_inf(rng):
    arrays = qkv(rng, batch=(1,), lq=16, lk=12)
    mask = np.ones((16, 12), dtype=bool)
    mask[3] = False                       # one row sees nothing
    mask[8:12, :6] = False                # rows that see only the second key chunk
    lazies = [lazy(x, (1, 1, 4, x.shape[-1])) for x in arrays]
    out, lse = check(lazies, arrays, lazy(mask, (4, 6)), mask)
    assert np.all(out[:, :, 3] == 0) and np.all(np.isneginf(lse[:, :, 3]))
    # lower_right with Lq > Lk: the first Lq - Lk rows see no key at all
    out, lse = check(lazies, arrays, causal="lower_right")
    assert np.all(out[:, :, :4] == 0) and np.all(np.isneginf(lse[:, :, :4]))
    assert np.all(np.isfinite(lse[:, :, 4:]))


@requires_dask
def test_empty_key_sequence_and_empty_queries(rng):
    import fastattn.dask

    q, k, v = qkv(rng, batch=(1,), lq=5, lk=0)
    out, lse = fastattn.dask.attention(lazy(q, 2), lazy(k, 2), lazy(v, 2), return_lse=True)
    np.testing.assert_array_equal(out.compute(), np.zeros(q.shape[:-1] + (6,)))
    assert np.all(np.isneginf(lse.compute()))
    q, k, v = qkv(rng, batch=(1,), lq=0, lk=5)
    assert fastattn.dask.attention(lazy(q, 2), k, v).compute().shape == (1, 4, 0, 6)


# ---------------------------------------------------------------- errors


@requires_dask
@pytest.mark.parametrize("arguments", [
    dict(q=(4, 8), k=(5, 7), v=(5, 7)),
    dict(q=(3, 4, 8), k=(2, 5, 8), v=(2, 5, 8)),
    dict(q=(2, 4, 8), k=(2, 5, 8), v=(2, 6, 8)),
    dict(q=(2, 1, 4, 8), k=(3, 1, 5, 8), v=(3, 1, 5, 8)),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), mask=((4, 6), np.float64)),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), mask=((4, 6), bool)),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), mask=((4, 5), np.int64)),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), causal="upper"),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), window=(1, -1)),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), scale=float("nan")),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), dtype=np.int32),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), scale="0.5"),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), scale=True),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), scale=1e39, dtype=np.float16),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), window={1: 2, 3: 4}),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), window=(1.5, 0)),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), return_lse="yes"),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), is_causal=True),
    dict(q=(4, 8), k=(5, 8), v=(5, 8), attn_mask=None, dropout_p=0.0),
    dict(q=(2, 3, 4, 8), k=(2, 3, 5, 8), v=(2, 3, 5, 8), mask=((2, 5), bool)),
])
def test_errors_match_fastattn_attention(arguments):
    import fastattn.dask

    arguments = dict(arguments)
    dtype = arguments.pop("dtype", np.float64)
    arrays = [np.zeros(arguments.pop(name), dtype=dtype) for name in "qkv"]
    if "mask" in arguments:
        shape, mask_dtype = arguments.pop("mask")
        arguments["mask"] = np.zeros(shape, dtype=mask_dtype)
    with pytest.raises((ValueError, TypeError)) as numpy_error:
        fastattn.attention(*arrays, **arguments)
    if "mask" in arguments:
        arguments["mask"] = da.from_array(arguments["mask"], chunks=2)
    with pytest.raises(numpy_error.type) as dask_error:
        fastattn.dask.attention(*(da.from_array(x, chunks=2) for x in arrays), **arguments)
    assert str(dask_error.value) == str(numpy_error.value)


@requires_dask
def test_bad_additive_mask_values(rng):
    import fastattn.dask

    arrays = qkv(rng, batch=(1,), lq=4, lk=5)
    mask = np.zeros((4, 5))
    mask[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):  # a NumPy mask: at once
        fastattn.dask.attention(*arrays, mask)
    out = fastattn.dask.attention(*arrays, da.from_array(mask, chunks=2))
    with pytest.raises(ValueError, match="NaN"):  # a dask mask: when its blocks compute
        out.compute()


@requires_dask
@pytest.mark.parametrize("position", ["q", "k", "v", "mask"])
def test_unknown_chunk_sizes_say_compute_chunk_sizes(rng, position):
    """After boolean indexing a dask array's chunk sizes are unknown (NaN)."""
    import fastattn.dask

    arrays = {name: lazy(rng.standard_normal((12, 8)), (4, 8)) for name in "qkv"}
    arrays["mask"] = lazy(rng.random((12, 12)) < 0.9, (4, 4))
    unknown = arrays[position][arrays[position][:, 0] > -np.inf]  # keeps every row, lazily
    assert np.isnan(unknown.shape[0])
    arrays[position] = unknown
    with pytest.raises(ValueError, match=rf"{position} has unknown chunk sizes.*"
                                         rf"{position}\.compute_chunk_sizes\(\)"):
        fastattn.dask.attention(**arrays)
    arrays[position] = unknown.compute_chunk_sizes()  # the fix the message names
    fastattn.dask.attention(**arrays).compute()


@requires_dask
@pytest.mark.parametrize("causal", ["upper_left", "lower_right"])
def test_huge_windows_mean_no_limit(rng, causal):
    arrays = qkv(rng, batch=(1,), lq=20, lk=30)
    lazies = [lazy(x, (1, 2, 7, x.shape[-1])) for x in arrays]
    for window in ((sys.maxsize, 0), (2**63, 0), (2**100, None)):
        out, lse = check(lazies, arrays, causal=causal, window=window)
        want_out, want_lse = expected(*arrays, causal=causal)
        np.testing.assert_allclose(out, want_out, **TIGHT)
        np.testing.assert_allclose(lse, want_lse, **TIGHT)


@requires_dask
@pytest.mark.parametrize("causal, window", [("upper_left", (0, 0)), ("lower_right", (2, 0)),
                                            (False, (0, 3)), (False, (3, 0))])
def test_pairs_cut_at_both_ends(rng, causal, window):
    """A narrow band cuts rows off both ends of a pair; they come back as zeros, lse -inf."""
    arrays = qkv(rng, batch=(1,), hq=2, hk=1, lq=30, lk=18)
    lazies = [lazy(arrays[0], (1, 2, 11, 8)), lazy(arrays[1], (1, 1, 5, 8)),
              lazy(arrays[2], (1, 1, 5, 6))]
    mask = rng.random((30, 18)) < 0.8
    check(lazies, arrays, causal=causal, window=window)
    check(lazies, arrays, lazy(mask, (11, 5)), mask, causal=causal, window=window)


@requires_dask
def test_keywords_checked_like_fastattn_attention(rng):
    import fastattn.dask

    arrays = qkv(rng, batch=(1,), lq=4, lk=5)
    out = fastattn.dask.attention(*arrays, return_lse=np.False_)
    assert isinstance(out, da.Array)
    with pytest.raises(TypeError, match="causal=True"):
        fastattn.dask.attention(*arrays, is_causal=True)


# ---------------------------------------------------------------- the graph


def visible(band, lq, lk):
    """Dense ``(Lq, Lk)``: which key each query sees under ``band``, as a loop."""
    return np.array([[band.lo <= j - i <= band.hi for j in range(lk)] for i in range(lq)],
                    dtype=bool).reshape(lq, lk)


@pytest.mark.parametrize("seed", range(30))
def test_block_calls_cover_the_global_band_on_every_pair(seed):
    """Each pair's call: a tight rectangle whose local band is the global band there."""
    pytest.importorskip("dask.array")
    from fastattn.dask._graph import block_calls

    rng = np.random.default_rng(seed)
    lq, lk = (int(n) for n in rng.integers(1, 40, size=2))
    causal = [None, "upper_left", "lower_right"][seed % 3]
    window = None if seed % 4 == 0 else tuple(
        None if rng.random() < 0.25 else int(rng.integers(0, 12)) for _ in range(2))
    if seed % 7 == 3:
        window = (2**64, None)  # larger than any sequence: no limit
    band = Band.from_alignment(lq, lk, causal, window)
    dense = visible(band, lq, lk)
    q_edges = [0, *sorted(set(rng.integers(1, lq, size=3).tolist()) if lq > 1 else []), lq]
    k_edges = [0, *sorted(set(rng.integers(1, lk, size=3).tolist()) if lk > 1 else []), lk]
    query_edges, key_edges = list(zip(q_edges, q_edges[1:])), list(zip(k_edges, k_edges[1:]))

    class Problem:  # what block_calls reads
        scale = 0.5

    Problem.band = band
    calls = block_calls(Problem, query_edges, key_edges, settings=())
    for (qi, (i0, i1)), (kj, (j0, j1)) in itertools.product(enumerate(query_edges),
                                                            enumerate(key_edges)):
        block = dense[i0:i1, j0:j1]
        call = calls.get((qi, kj))
        assert (call is None) == (not block.any())
        if call is None:
            continue
        (r0, r1), (c0, c1) = call.rows, call.keys
        assert 0 <= r0 < r1 <= i1 - i0 and 0 <= c0 < c1 <= j1 - j0
        inside = block[r0:r1, c0:c1]
        assert inside.any(axis=1).all() and inside.any(axis=0).all()  # tight
        assert block.sum() == inside.sum()  # nothing visible outside the rectangle
        np.testing.assert_array_equal(visible(call.band, r1 - r0, c1 - c0), inside)
        assert call.scale == 0.5


def graph_tasks(array, prefix):
    """The tasks of ``array``'s graph whose keys are named ``prefix-<token>``."""
    graph = dict(array.__dask_graph__())
    return {key: task for key, task in graph.items()
            if isinstance(key, tuple) and key[0].startswith(prefix + "-")}, graph


def partial_tasks(array):
    return graph_tasks(array, "fastattn-partial")[0]


@requires_dask
@pytest.mark.parametrize("causal, window, want", [
    (False, None, 16),
    ("upper_left", None, 10),      # the 4 x 4 lower triangle of chunk pairs
    ("upper_left", (16, 0), 7),    # the diagonal and the one below it
    (False, (0, 0), 4),            # the diagonal only
    ("lower_right", None, 10),
])
def test_pairs_removed_by_the_band_have_no_task(rng, causal, window, want, monkeypatch):
    import fastattn.dask
    from fastattn.dask import _blocks

    calls = []
    original = _blocks.block_partial

    def counting(call, q, k, v, mask):
        calls.append(q.shape)
        return original(call, q, k, v, mask)

    monkeypatch.setattr(_blocks, "block_partial", counting)
    arrays = qkv(rng, batch=(1,), hq=2, hk=2, lq=64, lk=64)
    lazies = [lazy(x, (1, 2, 16, x.shape[-1])) for x in arrays]
    out, lse = fastattn.dask.attention(*lazies, causal=causal, window=window, return_lse=True)
    tasks = partial_tasks(out)
    assert len(tasks) == want == len(partial_tasks(lse))
    # every pair of the graph is one the band does not remove, and vice versa
    band = Band.from_alignment(64, 64, None if causal is False else causal, window)
    dense = visible(band, 64, 64)
    seen = {key[-3:] for key in tasks}  # (head block, query block, key block)
    needed = {(0, i, j) for i in range(4) for j in range(4)
              if dense[16 * i:16 * i + 16, 16 * j:16 * j + 16].any()}
    assert seen == needed
    got = dask.compute(out, lse, scheduler="sync")
    assert len(calls) == want  # and nothing else ran
    want_out, want_lse = expected(*arrays, causal=causal, window=window)
    np.testing.assert_allclose(got[0], want_out, **TIGHT)
    np.testing.assert_allclose(got[1], want_lse, **TIGHT)


@requires_dask
def test_merge_is_a_pairwise_tree(rng):
    import fastattn.dask

    arrays = qkv(rng, batch=(1,), hq=1, hk=1, lq=4, lk=80)
    lazies = [lazy(arrays[0], (1, 1, 4, 8)), lazy(arrays[1], (1, 1, 10, 8)),
              lazy(arrays[2], (1, 1, 10, 6))]
    out = fastattn.dask.attention(*lazies)
    merges, graph = graph_tasks(out, "fastattn-merge")
    levels = sorted(key[-2] for key in merges)
    assert levels == [1, 1, 1, 1, 2, 2, 3]  # 8 partials -> 4 -> 2 -> 1
    for key in merges:  # each merge reads two states: partials or merges one level down
        inputs = get_dependencies(graph, key)
        assert len(inputs) == 2
        for name, *index in inputs:
            assert name.startswith("fastattn-partial-" if key[-2] == 1 else "fastattn-merge-")


# ---------------------------------------------------------------- schedulers and clusters


@requires_dask
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_on_the_threaded_scheduler(rng, backend):
    """Settings in force when the graph is built are the ones its tasks use."""
    import fastattn.dask

    arrays = qkv(rng)
    lazies = [lazy(x, (1, 2, 8, x.shape[-1])) for x in arrays]
    with fastattn.config_context(backend=backend, block_k=4):
        out = fastattn.dask.attention(*lazies, causal=True, window=(9, None))
    got = out.compute(scheduler="threads", num_workers=2)
    np.testing.assert_allclose(got, fastattn.attention(*arrays, causal=True, window=(9, None)),
                               **TIGHT)


@requires_dask
def test_task_settings(monkeypatch):
    from fastattn.dask._graph import task_settings

    monkeypatch.delenv("FASTATTN_NUM_THREADS", raising=False)
    monkeypatch.delenv("FASTATTN_BACKEND", raising=False)
    settings = dict(task_settings())
    assert settings["num_threads"] == 1 and settings["backend"] == "auto"  # dask is parallel
    with fastattn.config_context(num_threads=2, backend="naive", block_q=8):
        settings = dict(task_settings())
    assert (settings["num_threads"], settings["backend"], settings["block_q"]) == (2, "naive", 8)
    monkeypatch.setenv("FASTATTN_NUM_THREADS", "3")
    assert dict(task_settings())["num_threads"] == 3



@pytest.fixture(scope="module")
def two_process_cluster():
    pytest.importorskip("distributed")
    import fastattn.dask

    cluster, client = fastattn.dask.local_cluster(
        n_workers=2, threads_per_worker=1, memory_limit="1GiB", silence_logs=logging.ERROR,
        death_timeout=60)
    try:
        yield cluster, client
    finally:
        client.close(timeout=60)
        cluster.close(timeout=60)


@requires_dask
def test_on_a_local_cluster_of_two_worker_processes(rng, two_process_cluster):
    import fastattn.dask

    cluster, client = two_process_cluster
    assert len(client.scheduler_info()["workers"]) == 2
    assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    worker_pids = set(client.run(os.getpid).values())
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids

    arrays = qkv(rng, batch=(2,), hq=4, hk=2, lq=40, lk=56)
    mask = rng.random((40, 56)) < 0.8
    lazies = [lazy(arrays[0], (1, 2, 10, 8)), lazy(arrays[1], (1, 1, 14, 8)),
              lazy(arrays[2], (2, 2, 14, 6))]
    out, lse = fastattn.dask.attention(*lazies, lazy(mask, (10, 14)), causal="lower_right",
                                       window=(20, None), return_lse=True)
    got_out, got_lse = (future.result(timeout=120) for future in client.compute([out, lse]))
    want_out, want_lse = expected(*arrays, mask, causal="lower_right", window=(20, None))
    np.testing.assert_allclose(got_out, want_out, **TIGHT)
    np.testing.assert_allclose(got_lse, want_lse, **TIGHT)
