"""Test set-up: 8 simulated CPU devices (set before JAX starts) and shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> str:
    """The real Qwen3 tokenizer, built offline once and cached."""
    from stepgrpo_jax import tokenizer

    return tokenizer.cached_qwen3_tokenizer()


def pytest_collection_modifyitems(config, items):
    """Slow end-to-end tests first: with `-n 2` the long ones then run beside the many short
    ones instead of after them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
