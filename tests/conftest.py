"""Fixtures shared by several test files: the bad-input and crash-safety tables' tiny run, the real
smoke run that the browser tests read, and headless Chromium."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def lvm_cache(tmp_path_factory) -> Path:
    """One embedding cache for every CLI run of the session (never the user's ~/.cache)."""
    return tmp_path_factory.getbasetemp() / "lvm-cache"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """01_data + one epoch of 02_train on a tiny vectors corpus, with a manifest."""
    from tiny_runs import make_tiny_run, vectors_npz

    root = tmp_path_factory.mktemp("tiny")
    return make_tiny_run(root / "runs", vectors_npz(root / "corpus.npz"))


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """`python -m lvmlib run params/smoke.yaml` once per session (about two minutes), as a user runs it:
    without --quiet, so its terminal output is checked too (tests/test_console.py). -> runs/smoke."""
    tmp = tmp_path_factory.mktemp("smoke")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lvmlib",
            "run",
            "params/smoke.yaml",
            "--run-id",
            "smoke",
            "--runs-root",
            str(tmp / "runs"),
            "--reports-root",
            str(tmp / "reports"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (tmp / "stdout.txt").write_text(r.stdout)
    (tmp / "stderr.txt").write_text(r.stderr)
    return tmp / "runs" / "smoke"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of headless Chromium; skips (fails under LVM_REQUIRE_BROWSER=1, as in CI) without one."""
    from cdp import find_chromium

    path = find_chromium()
    if path is None:
        msg = (
            "headless Chromium not found (looked for $LVM_CHROMIUM, chromium, chromium-browser, google-chrome): "
            "install Debian's package with `apt-get install chromium` to check the reports in a browser"
        )
        if os.environ.get("LVM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LVM_REQUIRE_BROWSER=1 but {msg}")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def browser(chromium, tmp_path_factory):
    """One headless Chromium page (CDP) for the session."""
    from cdp import start_chromium

    try:
        with start_chromium(chromium, tmp_path_factory.mktemp("chromium-profile")) as cdp:
            yield cdp
    except RuntimeError as exc:
        pytest.fail(str(exc))
