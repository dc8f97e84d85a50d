"""Fixtures shared by the fastrnn tests; plain helpers live in ``_helpers.py``."""

import os
import sys
import zlib

import numpy as np
import pytest

# ``import _helpers`` under any import mode (prepend adds this dir, importlib doesn't).
sys.path.insert(0, os.path.dirname(__file__))


def pytest_generate_tests(metafunc):
    # Every test that takes ``kernel`` runs once per compiled kernel path this CPU supports.
    if "kernel" in metafunc.fixturenames:
        from fastrnn import functional

        metafunc.parametrize("kernel", functional.available_kernels(), indirect=True)


@pytest.fixture
def kernel(request):
    """Select one compiled kernel path for the test, restoring the previous one afterwards."""
    from fastrnn import functional

    previous = functional.get_kernel()
    functional.set_kernel(request.param)
    try:
        yield request.param
    finally:
        functional.set_kernel(previous)


@pytest.fixture
def restore_threads():
    """Restore fastrnn's (process-wide) thread count after the test."""
    import fastrnn

    previous = fastrnn.get_num_threads()
    yield
    fastrnn.set_num_threads(previous)


@pytest.fixture
def text_file(tmp_path):
    """A small UTF-8 corpus on disk (the CLI tests train on it)."""
    from _helpers import LM_TEXT

    path = tmp_path / "corpus.txt"
    path.write_text(LM_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: deterministic, but different for each case."""
    test_id = f"{request.node.module.__name__}::{request.node.name}"  # independent of the cwd
    return np.random.default_rng(zlib.crc32(test_id.encode()))


@pytest.fixture
def torch():
    """torch, or skip the test when it is not installed (the rest of the suite runs without it)."""
    return pytest.importorskip("torch")
