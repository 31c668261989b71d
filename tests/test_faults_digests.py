"""A run directory that proves itself intact: every file a run writes has its sha256 and size in the manifest,
`python -m lvmlib verify` checks them all, and every stage checks what it reads (docs/errors.md, last section)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import copy_run, snapshot

from lvmlib.app.cli import main
from lvmlib.core import digests
from lvmlib.core.errors import DataError, IntegrityError, RunError
from lvmlib.core.runs import (
    atomic_save_npy,
    atomic_write_json,
    atomic_write_text,
    check_digests,
    read_json,
    record_file,
    verify_run,
    write_manifest,
)

ROOT = Path(__file__).resolve().parent.parent
DATA_FILES = (
    "bank_vectors.npy",
    "bank_keys.npy",
    "bank_split.npy",
    "bank_texts.jsonl",
    "articles.json",
    "windows.npz",
    "summary.json",
)


def _flip(path: Path, at: float = 0.5) -> None:
    """Flip every bit of one byte, in place (same size, same name)."""
    with open(path, "r+b") as fh:
        fh.seek(int(os.path.getsize(path) * at))
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))


def _files(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["files"]


@pytest.fixture
def run(tmp_path) -> Path:
    """A bare run dir: a manifest with a run id, nothing else."""
    d = tmp_path / "r"
    d.mkdir()
    write_manifest(d, run_id="r", status="running")
    return d


# --------------------------------------------------------------------------- recording (fast)
def test_atomic_writes_in_a_run_record_sha256_and_size(run):
    atomic_write_json(run / "gates.json", {"passed": True})
    atomic_save_npy(run / "data" / "x.npy", np.arange(10))
    files = _files(run)
    assert set(files) == {"gates.json", "data/x.npy"}  # the manifest itself is never recorded
    for rel, rec in files.items():
        raw = (run / rel).read_bytes()
        assert rec["sha256"] == hashlib.sha256(raw).hexdigest() and rec["size"] == len(raw) and rec["at"]
    atomic_write_json(run / "gates.json", {"passed": False})  # a rewrite updates its record
    assert _files(run)["gates.json"]["sha256"] == hashlib.sha256((run / "gates.json").read_bytes()).hexdigest()
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"  # the rest kept


def test_nothing_is_recorded_outside_a_run_in_hidden_folders_or_for_live_files(run, tmp_path):
    atomic_write_text(tmp_path / "loose.txt", "x")  # no manifest above it
    atomic_write_text(run / ".data-staging-1-abc" / "bank_keys.npy", "x")  # the data stage's staging dir
    atomic_write_json(run / "train_progress.json", {"step": 1})
    assert "files" not in json.loads((run / "manifest.json").read_text())
    other = tmp_path / "notarun"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "some other tool"}')
    atomic_write_text(other / "f.txt", "x")  # a manifest.json that is not a run's: left alone
    assert json.loads((other / "manifest.json").read_text()) == {"name": "some other tool"}


def test_publishing_data_records_every_file_and_drops_the_old_records(run):
    from lvmlib.data.prepare import publish_dir

    atomic_write_text(run / "data" / "bank_texts.jsonl", '"old"\n')
    atomic_write_text(run / "data" / "stale.json", "{}")
    assert "data/stale.json" in _files(run)
    stage = run / ".data-staging-1-abc"
    for name in ("bank_texts.jsonl", "articles.json"):
        atomic_write_text(stage / name, f'"{name}"\n')
    publish_dir(stage, run / "data")
    files = _files(run)
    assert {r for r in files if r.startswith("data/")} == {"data/bank_texts.jsonl", "data/articles.json"}
    assert files["data/articles.json"]["sha256"] == digests.file_digest(run / "data" / "articles.json")["sha256"]
    assert verify_run(run)["bad"] == {}


def test_record_file_records_a_file_written_in_place(run):
    (run / "notebooks").mkdir()
    (run / "notebooks" / "01_data.ipynb").write_text("{}")
    record_file(run / "notebooks" / "01_data.ipynb")
    assert _files(run)["notebooks/01_data.ipynb"]["size"] == 2


# --------------------------------------------------------------------------- checking (fast)
def test_check_digests_names_a_changed_file_and_the_stage_to_rerun(run):
    atomic_save_npy(run / "data" / "bank_keys.npy", np.arange(100))
    check_digests(run, ["data/bank_keys.npy", "data/never_written.npy"])  # intact; unrecorded passes
    _flip(run / "data" / "bank_keys.npy")
    with pytest.raises(IntegrityError) as e:
        check_digests(run, ["data/bank_keys.npy"])
    msg = str(e.value)
    assert "data/bank_keys.npy: changed (sha256" in msg and "--only 01_data" in msg and "\n" not in msg
    assert isinstance(e.value, DataError) and e.value.exit_code == 1


def test_read_json_checks_the_digest_of_a_run_file(run):
    atomic_write_json(run / "metrics" / "eval.json", {"recall_at_5": 0.5})
    assert read_json(run / "metrics" / "eval.json") == {"recall_at_5": 0.5}
    (run / "metrics" / "eval.json").write_text('{"recall_at_5": 0.9}\n')  # an edited number, same size
    with pytest.raises(IntegrityError, match=r"metrics/eval\.json: changed .*--only 04_eval"):
        read_json(run / "metrics" / "eval.json")


def test_a_run_made_before_digests_checks_nothing_and_verifies_with_a_note(run, capsys):
    atomic_write_json(run / "gates.json", {"passed": True})
    m = json.loads((run / "manifest.json").read_text())
    del m["files"]
    (run / "manifest.json").write_text(json.dumps(m))
    (run / "gates.json").write_text('{"passed": false}')
    assert read_json(run / "gates.json") == {"passed": False}
    assert verify_run(run) is None
    assert main(["verify", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"{run}: no digests recorded (run made before digests)"


def test_verify_cli_statuses(run, tmp_path, capsys):
    atomic_write_json(run / "gates.json", {"passed": True})
    atomic_save_npy(run / "data" / "bank_keys.npy", np.arange(1000))
    assert main(["verify", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"{run}: 2 files intact (8.1 kB)"
    assert main(["verify", "r", "--runs-root", str(run.parent)]) == 0  # a run id under --runs-root
    capsys.readouterr()
    _flip(run / "data" / "bank_keys.npy")
    (run / "gates.json").unlink()
    assert main(["verify", str(run)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("data/bank_keys.npy: changed (sha256 ") and out[1] == "gates.json: missing"
    assert out[2] == f"{run}: 2 file(s) missing or changed, 0 intact (0 bytes)"
    assert main(["verify", str(tmp_path)]) == 2  # not a run
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path}: not a run directory (no manifest.json)"


def test_verify_run_refuses_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(RunError, match="not a run directory"):
        verify_run(tmp_path)


def test_prepared_data_and_checkpoints_are_checked_when_loaded(tiny_run, tmp_path):
    """The tiny run (01_data + 02_train in-process) records every file; a flipped byte in one is named by the
    loader before numpy or torch sees it, and a garbage file with no record still gets one line."""
    from lvmlib.data.prepare import load_prepared
    from lvmlib.model.checkpoint import read_checkpoint

    run = copy_run(tiny_run, tmp_path)  # a copy verifies: records are relative to the run dir
    files = _files(run)
    assert {f"data/{n}" for n in DATA_FILES} | {"best.pt", "last.pt", "history.json"} <= set(files)
    assert verify_run(run)["bad"] == {}
    load_prepared(run)
    _flip(run / "data" / "bank_split.npy", at=0.99)
    with pytest.raises(IntegrityError, match=r"data/bank_split\.npy: changed"):
        load_prepared(run)
    _flip(run / "data" / "bank_split.npy", at=0.99)  # restored: loads again
    load_prepared(run)
    _flip(run / "best.pt")
    with pytest.raises(IntegrityError, match=r"best\.pt: changed"):
        read_checkpoint(run / "best.pt")
    # no record (a run made before digests): a garbage windows.npz is still one line naming it
    m = json.loads((run / "manifest.json").read_text())
    del m["files"]
    (run / "manifest.json").write_text(json.dumps(m))
    (run / "data" / "windows.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError) as e:
        load_prepared(run)
    assert "data/windows.npz: unreadable" in str(e.value) and "pickle" not in str(e.value)


def test_the_run_page_shows_files_verified_or_the_changed_ones(run, tmp_path):
    from lvmlib.report.pages import integrity, record_run

    atomic_write_json(run / "gates.json", {"passed": True})
    assert integrity(run) == {"text": "1 file verified (21 bytes)", "bad": []}
    record_run(tmp_path / "reports", run)
    assert "1 file verified" in (tmp_path / "reports" / "r" / "index.html").read_text()
    (run / "gates.json").write_text('{"passed": 0001}')
    record_run(tmp_path / "reports", run)
    page = (tmp_path / "reports" / "r" / "index.html").read_text()
    assert "1 file(s) changed or missing since written" in page and "gates.json: changed" in page


# --------------------------------------------------------------------------- end to end (slow): the real CLI
@pytest.fixture(scope="module")
def faults_run(smoke_run, tmp_path_factory) -> Path:
    """A copy of the session's smoke run (`python -m lvmlib run params/smoke.yaml`), free to damage."""
    return copy_run(smoke_run, tmp_path_factory.mktemp("faults"))


def _lvm(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "lvmlib", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_smoke_run_records_every_artefact_and_verifies(faults_run):
    files = _files(faults_run)
    want = {f"data/{n}" for n in DATA_FILES} | {"best.pt", "last.pt", "history.json", "gates.json"}
    want |= {"metrics/eval.json", "metrics/queries.csv"}
    want |= {f"notebooks/{n}.ipynb" for n in ("01_data", "02_train", "03_gates", "04_eval")}
    assert want <= set(files)
    r = _lvm("verify", faults_run)
    assert r.returncode == 0 and r.stdout.strip().startswith(f"{faults_run}: {len(files)} files intact (")


@pytest.mark.slow
def test_a_flipped_byte_in_each_data_file_is_named_by_verify(faults_run):
    before = snapshot(faults_run)
    for name in DATA_FILES:
        path = faults_run / "data" / name
        _flip(path)
        r = _lvm("verify", faults_run)
        _flip(path)  # restored before anything is asserted
        lines = r.stdout.strip().splitlines()
        assert r.returncode == 1, r.stdout + r.stderr
        assert lines[0].startswith(f"data/{name}: changed (sha256 ") and len(lines) == 2
        assert lines[1].startswith(f"{faults_run}: 1 file(s) missing or changed, {len(_files(faults_run)) - 1} intact")
    assert snapshot(faults_run) == before


@pytest.mark.slow
def test_garbage_windows_fails_the_eval_stage_naming_the_file(faults_run, tmp_path):
    windows = faults_run / "data" / "windows.npz"
    saved = windows.read_bytes()
    before = {k: v for k, v in snapshot(faults_run).items() if k != "data/windows.npz"}
    windows.write_bytes(np.random.default_rng(1).bytes(len(saved)))
    r = _lvm("run", "--resume", faults_run, "--only", "04_eval", "--reports-root", tmp_path / "reports", "--quiet")
    windows.write_bytes(saved)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "IntegrityError" in lines[0] and "data/windows.npz: changed" in lines[0] and "--only 01_data" in lines[0]
    assert "Traceback" not in r.stderr and "pickle" not in r.stderr
    after = snapshot(faults_run)
    # nothing the run had is lost: its files are byte-identical (the runner only adds its failure record)
    changed = {k for k in before if after.get(k) != before[k]}
    assert changed <= {"manifest.json", "notebooks/04_eval.ipynb", ".run.lock", ".manifest.lock"}
    r = _lvm("verify", faults_run)  # the failed stage's notebook is recorded as it now is
    assert r.returncode == 0, r.stdout


@pytest.mark.slow
def test_a_changed_checkpoint_is_named_and_nothing_else_is_touched(faults_run):
    best = faults_run / "best.pt"
    before = snapshot(faults_run)
    _flip(best, at=0.7)
    r = _lvm("verify", faults_run)
    _flip(best, at=0.7)
    assert r.returncode == 1 and r.stdout.splitlines()[0].startswith("best.pt: changed (sha256 ")
    assert snapshot(faults_run) == before


@pytest.mark.slow
def test_verify_of_a_directory_that_is_not_a_run_is_one_line(tmp_path):
    shutil.copy(ROOT / "params" / "smoke.yaml", tmp_path)
    r = _lvm("verify", tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path}: not a run directory (no manifest.json)"
    assert r.stdout == ""
