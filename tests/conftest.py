"""Test set-up: 8 simulated CPU devices (set before JAX starts) and shared fixtures."""

import os
import shutil
import tempfile

# One persistent compilation cache for the session, shared by the xdist workers and every
# subprocess they start (they inherit the environment): the end-to-end tests run the same tiny
# programs in many fresh processes, and compiling them is most of their time.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="stepgrpo-jax-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# One torch thread per process: the suite runs one xdist worker per core, and torch's OpenMP
# threads spin while they wait, which on a busy core burns CPU the other worker needs (the
# SmolLM2 parity test: 90 CPU-s with 2 threads, 75 with 1, the same wall time alone).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> str:
    """The real Qwen3 tokenizer, built offline once and cached."""
    from stepgrpo_jax import tokenizer

    return tokenizer.cached_qwen3_tokenizer()


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):  # The process that made it.
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Slow end-to-end tests first: with `-n 2` the long ones then run beside the many short
    ones instead of after them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
