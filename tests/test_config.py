"""Configuration: config_context, environment variables, show_config, backend choice."""

import io
import threading

import numpy as np
import pytest

import fastattn
import fastattn._backends as registry
from fastattn._backends import all_backends, available_backends
from fastattn._config import BACKEND_NAMES, available_cores
from helpers import heads_qkv


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    monkeypatch.delenv("FASTATTN_BACKEND", raising=False)
    monkeypatch.delenv("FASTATTN_NUM_THREADS", raising=False)


def test_defaults():
    config = fastattn.get_config()
    assert config["backend"] == "auto"
    assert config["num_threads"] == available_cores() >= 1
    assert config["block_q"] is None and config["block_k"] is None


def test_config_context_nests_and_restores():
    before = fastattn.get_config()
    with fastattn.config_context(num_threads=1, backend="naive"):
        assert fastattn.get_config()["num_threads"] == 1
        with fastattn.config_context(num_threads=2, block_k=16):
            inner = fastattn.get_config()
            assert inner["num_threads"] == 2 and inner["block_k"] == 16
            assert inner["backend"] == "naive"  # inherited from the outer context
        after_inner = fastattn.get_config()
        assert after_inner["num_threads"] == 1 and after_inner["block_k"] is None
    assert fastattn.get_config() == before


def test_config_context_restores_after_an_exception():
    before = fastattn.get_config()
    with pytest.raises(RuntimeError):
        with fastattn.config_context(num_threads=1, block_q=4):
            raise RuntimeError("boom")
    assert fastattn.get_config() == before


def test_config_context_none_keeps_the_setting():
    with fastattn.config_context(num_threads=1):
        with fastattn.config_context(num_threads=None):
            assert fastattn.get_config()["num_threads"] == 1


def test_config_context_is_thread_local():
    seen = {}

    def worker():
        seen["num_threads"] = fastattn.get_config()["num_threads"]

    with fastattn.config_context(num_threads=1):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert seen["num_threads"] == available_cores()


def test_get_config_returns_a_copy():
    config = fastattn.get_config()
    config["num_threads"] = 12345
    assert fastattn.get_config()["num_threads"] != 12345


@pytest.mark.parametrize("settings, error, match", [
    (dict(num_threads=0), ValueError, "num_threads"),
    (dict(num_threads=-2), ValueError, "num_threads"),
    (dict(num_threads=2.5), ValueError, "num_threads"),
    (dict(num_threads="two"), ValueError, "num_threads"),
    (dict(num_threads=True), ValueError, "num_threads"),
    (dict(block_q=0), ValueError, "block_q"),
    (dict(block_k=-1), ValueError, "block_k"),
    (dict(block_k="x"), ValueError, "block_k"),
    (dict(backend=3), TypeError, "backend"),
    (dict(backend="bogus"), ValueError, "backend='bogus'.*'naive', 'numba', 'cython'"),
    (dict(backend="NUMBA"), ValueError, "backend='NUMBA'"),
    (dict(threads=2), TypeError, "threads"),
    (dict(num_thread=2), TypeError, "num_thread"),
])
def test_config_context_rejects_bad_values(settings, error, match):
    before = fastattn.get_config()
    with pytest.raises(error, match=match):
        with fastattn.config_context(**settings):
            pass
    assert fastattn.get_config() == before


def test_unavailable_backend_in_config_fails_on_use(rng, monkeypatch):
    """A known backend that cannot load here is accepted as a setting; a call says why."""
    missing = registry.Backend("cython", False, "cannot be imported: no compiler here")
    real_load = registry._load
    monkeypatch.setattr(registry, "_load",
                        lambda name: missing if name == "cython" else real_load(name))
    q, k, v = heads_qkv(rng, hq=1, lq=2, lk=3)
    with fastattn.config_context(backend="cython"):
        with pytest.raises(ValueError, match="no compiler here"):
            fastattn.attention(q, k, v)
        out = fastattn.attention(q, k, v, backend="naive")  # the argument beats the setting
    np.testing.assert_array_equal(out, fastattn.attention(q, k, v, backend="naive"))


def test_backend_names_are_the_registrys():
    assert BACKEND_NAMES == registry.backend_names()
    assert {b.name for b in all_backends()} == set(BACKEND_NAMES)


@pytest.mark.parametrize("backend", available_backends())
def test_config_backend_is_used(rng, backend):
    """With backend=None, the configured backend runs (bit-identical to naming it)."""
    q, k, v = heads_qkv(rng, hq=2, lq=70, lk=300, d=8)
    with fastattn.config_context(backend=backend, num_threads=1):
        configured = fastattn.attention(q, k, v)
        named = fastattn.attention(q, k, v, backend=backend)
    np.testing.assert_array_equal(configured, named)


# ---------------------------------------------------------------- environment variables


def test_environment_backend(monkeypatch):
    monkeypatch.setenv("FASTATTN_BACKEND", "naive")
    assert fastattn.get_config()["backend"] == "naive"
    with fastattn.config_context(backend="auto"):  # context beats environment
        assert fastattn.get_config()["backend"] == "auto"


@pytest.mark.parametrize("value", ["nope", "Numba", "torch", "auto,naive"])
def test_environment_unknown_backend_names_the_variable(monkeypatch, rng, value):
    """Checked when the setting is read, naming the variable and listing the backends."""
    monkeypatch.setenv("FASTATTN_BACKEND", value)
    for read in (fastattn.get_config, lambda: fastattn.attention(*heads_qkv(rng, hq=1))):
        with pytest.raises(ValueError) as info:
            read()
        message = str(info.value)
        assert f"FASTATTN_BACKEND={value!r}" in message
        assert all(repr(name) in message for name in BACKEND_NAMES + ("auto",))


@pytest.mark.parametrize("value", ["naive", " numba ", "auto"])
def test_environment_backend_names(monkeypatch, value):
    monkeypatch.setenv("FASTATTN_BACKEND", value)
    assert fastattn.get_config()["backend"] == value.strip()


@pytest.mark.parametrize("value, expected", [("1", 1), ("2", 2), (" 3 ", 3)])
def test_environment_num_threads(monkeypatch, value, expected):
    monkeypatch.setenv("FASTATTN_NUM_THREADS", value)
    assert fastattn.get_config()["num_threads"] == expected
    with fastattn.config_context(num_threads=5):
        assert fastattn.get_config()["num_threads"] == 5


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "1e2"])
def test_environment_num_threads_invalid(monkeypatch, value, rng):
    monkeypatch.setenv("FASTATTN_NUM_THREADS", value)
    with pytest.raises(ValueError, match="FASTATTN_NUM_THREADS"):
        fastattn.get_config()
    q, k, v = heads_qkv(rng, hq=1, lq=2, lk=2)
    with pytest.raises(ValueError, match="FASTATTN_NUM_THREADS"):
        fastattn.attention(q, k, v)


def test_environment_is_read_at_call_time(monkeypatch):
    monkeypatch.setenv("FASTATTN_NUM_THREADS", "1")
    assert fastattn.get_config()["num_threads"] == 1
    monkeypatch.setenv("FASTATTN_NUM_THREADS", "2")
    assert fastattn.get_config()["num_threads"] == 2


# ---------------------------------------------------------------- show_config


def test_show_config_prints_versions_and_backends(capsys):
    fastattn.show_config()
    text = capsys.readouterr().out
    assert text.startswith("fastattn")
    assert np.__version__ in text and "numpy" in text
    import numba
    import scipy

    assert numba.__version__ in text and scipy.__version__ in text
    for backend in all_backends():
        line = next(line for line in text.splitlines()
                    if line.split()[:1] == [backend.name] and backend.reason in line)
        assert ("unavailable" if not backend.available else "available") in line
        assert backend.reason in line
    assert str(fastattn.get_config()["num_threads"]) in text


def test_show_config_reports_the_running_version(capsys):
    """The version shown is the one of the fastattn being run (also from a source tree)."""
    fastattn.show_config()
    first = capsys.readouterr().out.splitlines()[0]
    assert first.split() == ["fastattn", fastattn.__version__]


def test_show_config_to_a_file(capsys):
    buffer = io.StringIO()
    with fastattn.config_context(num_threads=1, backend="naive"):
        fastattn.show_config(file=buffer)
    assert capsys.readouterr().out == ""
    text = buffer.getvalue()
    assert "numpy" in text and "naive" in text
    assert any(line.split() == ["num_threads", "1"] for line in text.splitlines())


def test_public_names():
    for name in fastattn.__all__:
        assert hasattr(fastattn, name)
    assert {"attention", "merge_attention", "config_context", "get_config",
            "show_config"} <= set(fastattn.__all__)
