"""Test-wide set-up: 8 forced CPU devices (must be set before jax is imported) and float32
matmuls at full precision so parity figures measure the model, not XLA's defaults."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# TFDS datasets the tests build (small clipjax_shapes variants) go to a per-session directory,
# never into the user's ~/tensorflow_datasets; subprocesses inherit it.
if "CLIPJAX_TEST_TFDS_DIR" not in os.environ:
    import tempfile

    os.environ["CLIPJAX_TEST_TFDS_DIR"] = tempfile.mkdtemp(prefix="clipjax-tests-tfds-")
os.environ["TFDS_DATA_DIR"] = os.environ["CLIPJAX_TEST_TFDS_DIR"]

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
    """Tests marked slow run only with CLIPJAX_SLOW_TESTS=1 (the suite must fit CI's budget)."""
    if os.environ.get("CLIPJAX_SLOW_TESTS") == "1":
        return
    import pytest

    skip = pytest.mark.skip(reason="slow: run with CLIPJAX_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
