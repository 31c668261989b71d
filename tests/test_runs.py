"""Run directories and crash-safe writes: atomic replace, exclusive run dirs, locked index/manifest."""

import json
import multiprocessing as mp
import os

import numpy as np
import pytest

from lvmlib.core import runs
from lvmlib.core.errors import RunError
from lvmlib.report.pages import record_run, write_index


def test_atomic_write_keeps_old_file_when_writer_crashes(tmp_path):
    target = tmp_path / "history.json"
    runs.atomic_write_json(target, [{"epoch": 1}])
    with pytest.raises(RuntimeError):
        with runs.atomic_path(target) as tmp:
            tmp.write_text('[{"epoch": 1}, {"ep')  # half a file...
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == [{"epoch": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"], "no temp file left behind"


def test_atomic_npz_round_trip(tmp_path):
    runs.atomic_save_npz(tmp_path / "a.npz", x=np.arange(6).reshape(2, 3))
    assert np.load(tmp_path / "a.npz")["x"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_write_into_unwritable_place_fails_cleanly(tmp_path):
    blocker = tmp_path / "metrics"
    blocker.write_text("a file where a directory should be")  # works even as root, unlike chmod
    with pytest.raises(OSError):
        runs.atomic_write_json(blocker / "eval.json", {})
    assert blocker.read_text().startswith("a file")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    runs.atomic_write_json(target, {"ok": 1})

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        runs.atomic_write_json(target, {"ok": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_run_dirs_are_exclusive(tmp_path):
    runs.create_run_dir(tmp_path, "r1")
    with pytest.raises(RunError, match="already exists"):
        runs.create_run_dir(tmp_path, "r1")


def test_read_json_names_missing_and_corrupt_files(tmp_path):
    with pytest.raises(RunError, match="gates.json: missing"):
        runs.read_json(tmp_path / "gates.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(RunError, match="bad.json: not valid JSON"):
        runs.read_json(tmp_path / "bad.json")


def _record(args):
    reports, run_dir = args
    record_run(reports, run_dir)


def test_concurrent_runs_never_clobber_the_index(tmp_path):
    reports = tmp_path / "reports"
    dirs = []
    for i in range(8):
        d = runs.create_run_dir(tmp_path / "runs", f"run{i}")
        runs.start_manifest(d, f"run{i}", "params/smoke.yaml", [], 0, "smoke")
        dirs.append((reports, d))
    with mp.get_context("spawn").Pool(4) as pool:
        pool.map(_record, dirs)
    html = (reports / "index.html").read_text()
    for i in range(8):
        assert f"run{i}/index.html" in html
    write_index(reports)  # idempotent


def _manifest_writer(args):
    run_dir, i = args
    for j in range(20):
        runs.write_manifest(run_dir, **{f"k{i}_{j}": j})


def test_concurrent_manifest_updates_are_all_kept(tmp_path):
    d = runs.create_run_dir(tmp_path, "r")
    runs.write_manifest(d, status="running")
    with mp.get_context("spawn").Pool(3) as pool:
        pool.map(_manifest_writer, [(d, i) for i in range(3)])
    m = runs.read_manifest(d)
    assert all(f"k{i}_{j}" in m for i in range(3) for j in range(20))


def test_atomic_files_get_normal_permissions(tmp_path):
    runs.atomic_write_text(tmp_path / "r.html", "x")
    mode = (tmp_path / "r.html").stat().st_mode & 0o777
    assert mode == 0o666 & ~runs._UMASK
