"""A notebook kernel that dies under a cell (what the out-of-memory killer does): the one failure line says
how it died and how to resume (`lvmlib.app.execute.kernel_end`, `lvmlib.app.runner`), and the resume works."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from tiny_runs import ROOT, SMOKE, snapshot, tiny_overrides, vectors_npz

from lvmlib.app.execute import _running_cell, failure_line, kernel_end
from lvmlib.core.errors import KernelDied


def _ended(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code])
    proc.wait(timeout=60)
    return proc


def test_kernel_end_names_the_signal_and_the_likely_cause():
    """The returncode of the kernel's Popen, in words: SIGKILL is likely the out-of-memory killer."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    sleeper.send_signal(signal.SIGKILL)
    assert kernel_end(sleeper) == "the kernel was killed by SIGKILL (signal 9) — likely out of memory"
    segv = _ended("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert kernel_end(segv) == "the kernel was killed by SIGSEGV (signal 11)"
    assert kernel_end(_ended("raise SystemExit(3)")) == "the kernel exited with status 3"
    assert kernel_end(None) == "the kernel died (its exit status is unknown)"


def test_a_dead_kernel_is_one_line_naming_the_cell_it_ran(tmp_path):
    """The cell is the last one papermill started (the dead kernel sent no error to name it)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1", execution_count=n) for n in (1, 2, 3)]
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("# title"))
    for cell in nb.cells[:3]:
        cell.metadata["papermill"] = {"start_time": "2026-01-01T00:00:00", "status": "completed"}
    nb.cells[3].metadata["papermill"] = {"start_time": None, "status": "pending"}
    nbformat.write(nb, str(tmp_path / "x.ipynb"))
    assert _running_cell(tmp_path / "x.ipynb") == 2
    assert _running_cell(tmp_path / "missing.ipynb") is None
    exc = KernelDied("the kernel was killed by SIGKILL (signal 9) — likely out of memory", 2)
    assert (
        failure_line("02_train", exc)
        == "02_train (cell 2): the kernel was killed by SIGKILL (signal 9) — likely out of memory"
    )
    assert failure_line("02_train", KernelDied("the kernel exited with status 1")) == (
        "02_train: the kernel exited with status 1"
    )


def _run(tmp_path: Path, args: list, cache: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LVM_CACHE_DIR=str(cache))
    roots = ["--runs-root", tmp_path / "runs", "--reports-root", tmp_path / "reports", "--quiet"]
    return subprocess.Popen(
        [sys.executable, "-m", "lvmlib", "run", *map(str, [*args, *roots])],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _training_kernel_pid(run: Path, proc: subprocess.Popen, timeout: float = 300.0) -> int:
    """The pid that trains (the 02_train kernel: train.nproc=1 trains in it) once an epoch is done."""
    deadline = time.time() + timeout  # a bound against hangs only
    while True:
        assert proc.poll() is None, f"the run ended before training: {proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, "no completed epoch"
        try:
            prog = json.loads((run / "train_progress.json").read_text())
        except (OSError, ValueError):
            prog = {}
        if prog.get("state") == "running" and (run / "history.json").is_file():
            return int(prog["pid"])
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_of_the_kernel_is_explained_and_the_resume_completes(tmp_path, lvm_cache):
    """kill -9 of the 02_train kernel mid-training: one FAILED line with the cell, the signal, the likely
    cause and the exact resume command; the manifest says failed with that reason; the resume finishes
    the run and leaves 01_data's files byte for byte."""
    over = tiny_overrides(vectors_npz(tmp_path / "c.npz")) + [
        "train.epochs=200",
        "train.decision_tree=false",
        "train.patience=1000",
    ]
    proc = _run(tmp_path, [SMOKE, *[a for o in over for a in ("--set", o)], "--run-id", "oom"], lvm_cache)
    run = tmp_path / "runs" / "oom"
    pid = _training_kernel_pid(run, proc)
    assert pid != proc.pid and "ipykernel" in Path(f"/proc/{pid}/cmdline").read_text()
    data_before = snapshot(run / "data")
    os.kill(pid, signal.SIGKILL)  # what the OOM killer does
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    line = err.strip().splitlines()[-1]
    resume = f"python -m lvmlib run --resume {run}"
    assert line.startswith("[lvm-study] FAILED: 02_train (cell "), line
    assert "the kernel was killed by SIGKILL (signal 9) — likely out of memory" in line, line
    assert line.endswith(f"; resume with: {resume}"), line
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["stages"]["02_train"]["status"] == "failed", manifest
    assert manifest["failure"] == line.removeprefix("[lvm-study] FAILED: ")

    done = len(json.loads((run / "history.json").read_text()))
    proc = _run(tmp_path, [*resume.split()[3:], "--set", f"train.epochs={done + 1}"], lvm_cache)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["failure"] is None, manifest
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == list(range(1, done + 2))
    assert snapshot(run / "data") == data_before
