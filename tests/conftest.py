"""Fixtures shared by the bad-input and crash-safety tables."""
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def lvm_cache(tmp_path_factory) -> Path:
    """One embedding cache for every CLI run of the session (never the user's ~/.cache)."""
    return tmp_path_factory.getbasetemp() / "lvm-cache"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """01_data + one epoch of 02_train on a tiny vectors corpus, with a manifest."""
    from test_bad_inputs import make_tiny_run, vectors_npz
    root = tmp_path_factory.mktemp("tiny")
    return make_tiny_run(root / "runs", vectors_npz(root / "corpus.npz"))
