"""Issue 29's faults without a kernel: `status` takes a run id or a path and words a stopped run as the
manifest does; a params cap and a batch larger than the train windows are one line naming the key."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import copy_run

from lvmlib.app.cli import main
from lvmlib.core.config import ConfigError, load_config
from lvmlib.core.runs import write_manifest


def _status(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["status", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_status_takes_a_run_id_under_runs_root_or_a_path(tmp_path, tiny_run, capsys):
    run = copy_run(tiny_run, tmp_path)
    by_id = _status(capsys, run.name, "--runs-root", tmp_path / "runs")
    by_path = _status(capsys, run)
    assert by_id[0] == by_path[0] == 0, (by_id, by_path)
    assert "epochs done: 1/1" in by_id[1] and "run status: succeeded" in by_id[1]
    assert by_id[1].splitlines()[1:] == by_path[1].splitlines()[1:]  # the same report, but for the run's name
    code, _, err = _status(capsys, "nope", "--runs-root", tmp_path / "runs")
    assert code == 2 and err.strip() == (
        f"error: nope: no such run directory (neither a path nor a run id under {tmp_path / 'runs'})"
    )


@pytest.mark.parametrize("where", ["notrun", "/etc", "relative /etc"])
def test_status_refuses_a_directory_that_is_not_a_run(tmp_path, capsys, where):
    """One line, exit 2 — as `run --resume` refuses a directory that is not a run. The relative case is
    /etc reached by `../..` from wherever the suite runs (a clone's depth differs between machines)."""
    (tmp_path / "notrun").mkdir()
    (tmp_path / "notrun" / "notes.txt").write_text("not a run")
    arg = {"notrun": str(tmp_path / "notrun"), "/etc": "/etc", "relative /etc": os.path.relpath("/etc")}[where]
    assert where != "relative /etc" or arg.startswith("..")
    code, out, err = _status(capsys, arg, "--runs-root", tmp_path / "runs")
    assert code == 2 and out == "", (code, out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {arg}: not a run directory"), err


def test_status_words_an_interrupted_run_as_interrupted(tmp_path, tiny_run, monkeypatch, capsys):
    """The files an interrupted run leaves (train_progress.json by the trainer, the manifest by the runner,
    both written by their real code): `status` says interrupted and how to continue, never KeyboardInterrupt."""
    from lvmlib.app import runner
    from lvmlib.app.execute import Stop
    from lvmlib.train import loop

    run = copy_run(tiny_run, tmp_path)

    def stopped(self):
        raise KeyboardInterrupt  # what the runner's SIGINT to the kernel raises inside the running cell

    monkeypatch.setattr(loop._Trainer, "_loop", stopped)
    with pytest.raises(KeyboardInterrupt):
        loop.train(load_config(run / "params.yaml"), run, resume=True, progress=False)
    monkeypatch.setattr(Stop, "signum", signal.SIGTERM)
    exc = runner._interrupted(run, tmp_path / "reports", {"02_train": {"status": "interrupted"}}, "02_train")
    assert "interrupted by SIGTERM" in str(exc)
    code, out, _ = _status(capsys, run)
    assert code == 0 and "KeyboardInterrupt" not in out, out
    said = (
        "run status: interrupted — 02_train: interrupted by SIGTERM; last.pt holds the last completed epoch; "
        f"continue with: python -m lvmlib run --resume {run}"
    )
    assert said in out, out
    assert "training: interrupted" in out and "training was interrupted; continue with: " in out, out


def test_status_of_a_run_whose_kernel_died_gives_the_runners_reason(tmp_path, tiny_run, capsys):
    """A kernel killed by SIGKILL leaves train_progress.json 'running' with a dead pid; the manifest has
    the runner's failure line, and that is what `status` says."""
    run = copy_run(tiny_run, tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    prog = json.loads((run / "train_progress.json").read_text())
    prog.update(state="running", pid=int(dead.stdout), error=None)
    (run / "train_progress.json").write_text(json.dumps(prog))
    line = (
        "02_train (cell 4): the kernel was killed by SIGKILL (signal 9) — likely out of memory; "
        f"resume with: python -m lvmlib run --resume {run}"
    )
    write_manifest(run, status="failed", failure=line)
    code, out, _ = _status(capsys, run)
    assert code == 0 and f"run status: failed — {line}" in out, out
    assert "training: stopped (its process is gone: killed or crashed)" in out, out
    prog.update(host="another-host")  # whether its pid lives cannot be known: the manifest still decides
    (run / "train_progress.json").write_text(json.dumps(prog))
    (run / ".run.lock").unlink(missing_ok=True)
    code, out, _ = _status(capsys, run)
    assert code == 0 and f"run status: failed — {line}" in out and "no process holds" not in out, out


def test_a_cap_on_the_command_line_is_one_line_naming_key_and_bound(capsys):
    assert main(["check", "params/smoke.yaml", "--set", "train.batch_size=100000000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "key 'train.batch_size' = 100000000: must be <= 65536" in err, err


def test_a_batch_larger_than_the_train_windows_is_refused_at_the_start_of_training(tmp_path, tiny_run):
    from lvmlib.data.prepare import load_prepared
    from lvmlib.train.loop import train

    run = copy_run(tiny_run, tmp_path)
    n = len(load_prepared(run).windows("train")[1])
    before = (run / "last.pt").read_bytes()
    with pytest.raises(ConfigError) as info:
        train(load_config(run / "params.yaml", [f"train.batch_size={n + 1}"]), run, progress=False)
    assert str(info.value) == (
        f"{run / 'params.yaml'}: key 'train.batch_size' = {n + 1}: more than the run's {n} train windows; "
        f"use train.batch_size <= {n} (or more training data)"
    )
    assert (run / "last.pt").read_bytes() == before  # refused before anything was trained or written
    history = train(
        load_config(run / "params.yaml", [f"train.batch_size={n}", "train.grad_accum=1"]), run, progress=False
    )
    assert len(history) == 1  # exactly the number of windows is one full batch


def test_a_closed_form_baseline_has_no_batch_to_refuse(tmp_path, tiny_run):
    from lvmlib.train.loop import train

    run = copy_run(tiny_run, tmp_path)
    cfg = load_config(run / "params.yaml", ["model.kind=ridge", "train.batch_size=65536"])
    assert train(cfg, run, progress=False) is not None
    assert Path(run / "best.pt").is_file()


def test_a_killed_data_stage_leaves_no_staging_folder_once_the_runner_marks_the_run(tmp_path):
    """A kernel killed inside 01_data never runs its own clean-up; the runner's failure record removes the
    staging and swapped-out folders of a dead process, never those of a live one."""
    import os

    from lvmlib.app.runner import _mark_failed
    from lvmlib.data.prepare import remove_stale_staging

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    run = tmp_path / "runs" / "r"
    for name in (
        f".data-staging-{dead_pid}-abc123",
        f".data-old-{dead_pid}-def456",
        f".data-staging-{os.getpid()}-0a0b0c",
    ):
        (run / name).mkdir(parents=True)
        (run / name / "bank_vectors.npy").write_bytes(b"x")
    assert remove_stale_staging(run) == 2
    assert [p.name for p in run.iterdir()] == [f".data-staging-{os.getpid()}-0a0b0c"]  # a live writer's stays
    (run / f".data-staging-{dead_pid}-ffffff").mkdir()
    write_manifest(run, run_id="r", status="running", stages={})
    _mark_failed(run, tmp_path / "reports", {}, "01_data: the kernel was killed by SIGKILL (signal 9)")
    assert not (run / f".data-staging-{dead_pid}-ffffff").exists()
