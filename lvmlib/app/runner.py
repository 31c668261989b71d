"""Run the study: the stage notebooks in order, their pages and the run record, a failed run marked in one line.

Run the study: execute the stage notebooks in order (`lvmlib.app.execute`), render them and keep the run
record and index up to date (`lvmlib.report.pages`); mark the run failed or interrupted with one line.

Each notebook receives only `params_path`, `run_dir` and `overrides` (02_train also `resume`); its
inputs are files in the run directory, so any notebook can be re-run alone against a run dir.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from lvmlib.app.execute import (
    RUNNER_ENV,
    Signals,
    Stop,
    declared_parameters,
    execute_notebook,
    failure_line,
)
from lvmlib.app.tweaks import record_tweak
from lvmlib.core.config import Config, dump_config, load_config
from lvmlib.core.errors import KernelDied, StudyFailed, StudyInterrupted
from lvmlib.core.paths import NOTEBOOK_DIR, NOTEBOOKS
from lvmlib.core.runs import (
    PROJECT_ROOT,
    RunError,
    RunLock,
    atomic_write_text,
    check_run_id,
    create_run_dir,
    new_run_id,
    now_iso,
    read_json,
    start_manifest,
    write_manifest,
)
from lvmlib.report import tweaks
from lvmlib.report.pages import headline, record_run, render_html

RESERVED_PARAMS = ("params_path", "run_dir", "overrides", "resume")  # set by the runner, never by --param


def notebook_config(params_path: str, run_dir: str, overrides: list[str] | None = None, stage: str = "") -> Config:
    """The config a notebook works with: the params file (or the run's resolved params.yaml) + overrides.

    Relative paths mean what they mean on the command line: a kernel that Jupyter started in
    notebooks/ moves to the project root when `run_dir` is found there. Outside the runner (Jupyter,
    a notebook executed by hand) the call records a tweak of `stage` in the run (see `lvmlib.app.tweaks`).
    """
    if not run_dir:
        raise RunError("notebook parameter 'run_dir' is empty: pass -p run_dir runs/<run_id>")
    if not Path(run_dir).is_absolute() and not Path(run_dir).exists() and (PROJECT_ROOT / run_dir).exists():
        os.chdir(PROJECT_ROOT)
    path = params_path or str(Path(run_dir) / "params.yaml")
    cfg = load_config(path, list(overrides or []))
    if os.environ.get(RUNNER_ENV) != "1" and (Path(run_dir) / "manifest.json").is_file():
        record_tweak(run_dir, stage, params_path, list(overrides or []), cfg)
    return cfg


# --------------------------------------------------------------------------- the study
def _execute(name: str, run_dir: Path, params_path: str, overrides: list[str], extra: dict[str, Any], output) -> None:
    src = NOTEBOOK_DIR / f"{name}.ipynb"
    if not src.is_file():
        raise StudyFailed(f"{src}: notebook missing")
    params = {"params_path": params_path, "run_dir": str(run_dir), "overrides": list(overrides), **extra}
    execute_notebook(src, run_dir / "notebooks" / f"{name}.ipynb", params, output=output)


def check_notebook_params(names: list[str], notebook_params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Route `--param key=value` to the notebooks that declare `key`; unknown names are an error."""
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise RunError(f"unknown notebook(s) {unknown}; the study's notebooks are {list(NOTEBOOKS)}")
    missing = [str(NOTEBOOK_DIR / f"{n}.ipynb") for n in names if not (NOTEBOOK_DIR / f"{n}.ipynb").is_file()]
    if missing:
        raise RunError(f"notebook file(s) missing: {', '.join(missing)}")
    declared = {n: declared_parameters(NOTEBOOK_DIR / f"{n}.ipynb") for n in names}
    routed: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, value in notebook_params.items():
        if key in RESERVED_PARAMS:
            raise RunError(
                f"--param {key}={value!r}: '{key}' is set by `run` itself, not a user parameter "
                "(the run directory is --run-id/--runs-root or --resume; params are PARAMS and --set)"
            )
        takers = [n for n in names if key in declared[n]]
        if not takers:
            known = sorted(set().union(*declared.values()))
            raise RunError(
                f"notebook parameter '{key}' (value {value!r}) does not exist in {', '.join(names)}; "
                f"declared parameters: {', '.join(known)}"
            )
        for n in takers:
            routed[n][key] = value
    return routed


def _check_writable(path: Path, what: str) -> None:
    """Fail before anything is written when `path` cannot take files (a file in the way, read-only, full)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RunError(f"{path}: cannot write {what} here ({exc.strerror or exc})") from None


def _check_resume_overrides(run_dir: Path, cfg: Config) -> None:
    """--resume keeps the model: last.pt/best.pt hold weights of the stored shape, so model.* overrides
    (other than the scan backend, a runtime choice) are refused before params.yaml is rewritten."""
    ckpts = [p.name for p in (run_dir / "last.pt", run_dir / "best.pt") if p.is_file()]
    if not ckpts:
        return
    old = load_config(run_dir / "params.yaml").model
    keys = [k for k in type(old).model_fields if k != "scan"]
    changed = [
        f"model.{k} {getattr(old, k)!r} -> {getattr(cfg.model, k)!r}"
        for k in keys
        if getattr(old, k) != getattr(cfg.model, k)
    ]
    if changed:
        raise RunError(
            f"{run_dir}: --resume cannot change the model of a run that has {' and '.join(ckpts)} "
            f"({'; '.join(changed)}); start a new run instead"
        )


def _check_reports_owner(reports_root: Path, run_id: str, run_dir: Path) -> None:
    """reports/<id>/ belongs to one run folder: refuse when it holds the reports of another folder
    that still exists (two runs roots with a folder of the same name); a moved run takes it over."""
    try:
        other = Path(json.loads((reports_root / run_id / "run.json").read_text()).get("run_dir") or "")
    except (OSError, ValueError, AttributeError):
        return
    if (
        str(other)
        and other != run_dir
        and (other / "manifest.json").is_file()
        and not (run_dir.exists() and os.path.samefile(other, run_dir))
    ):
        raise RunError(
            f"{reports_root / run_id}: holds the reports of another run folder ({other}); "
            f"rename {run_dir} or pass another --reports-root"
        )


def _mark_failed(run_dir: Path, reports_root: Path, stages: dict[str, Any], line: str, status: str = "failed") -> str:
    """Record the failure in the manifest and the index (best effort on a full disk); -> the reason line."""
    try:
        write_manifest(run_dir, status=status, ended_at=now_iso(), stages=stages, failure=line)
    except OSError as exc:
        line += f" (the manifest could not be marked failed either: {exc})"
    try:
        record_run(reports_root, run_dir)
    except OSError:
        pass  # the manifest is the record; the next run rebuilds the index
    from lvmlib.data.prepare import remove_stale_staging  # lazy: the runner starts without numpy & co

    try:  # a data stage whose kernel was killed mid-cell never ran its own clean-up
        remove_stale_staging(run_dir)
    except OSError:
        pass
    return line


def run_study(
    params_path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    run_id: str | None = None,
    runs_root: str | Path = "runs",
    reports_root: str | Path = "reports",
    resume: str | Path | None = None,
    only: list[str] | None = None,
    progress: bool = True,
    notebook_params: dict[str, Any] | None = None,
    verbose: bool = False,
) -> Path:
    """Execute the notebooks in order; returns the run dir. Raises StudyFailed with a one-line reason
    (StudyInterrupted after Ctrl-C/SIGTERM: the run is marked `interrupted` and can be resumed).

    Terminal output (`console.Console`): `progress=False` prints only the closing summary, `verbose`
    adds every line the notebooks print to the per-stage lines and the live progress line."""
    from lvmlib.app.console import Console

    con = Console("quiet" if not progress else "verbose" if verbose else "normal")
    reports_root = Path(reports_root).resolve()
    overrides = list(overrides)
    names = only or list(NOTEBOOKS)
    # Everything that can be checked is checked before anything is written.
    if resume:
        run_dir = Path(resume).resolve()
        if not (run_dir / "manifest.json").is_file():
            raise RunError(f"{run_dir}: not a run directory (no manifest.json) — cannot resume")
        old = read_json(run_dir / "manifest.json")  # a truncated manifest: one line naming it
        if not isinstance(old, dict):
            raise RunError(f"{run_dir / 'manifest.json'}: not a run manifest (a JSON object) — cannot resume")
        run_id = check_run_id(run_dir.name, "run folder")  # reports are keyed by the folder: a copy is a new run
        cfg = load_config(run_dir / "params.yaml", overrides)
    else:
        if run_id is not None:
            check_run_id(run_id)
        cfg = load_config(params_path, overrides)
        run_id = run_id or new_run_id(cfg.name)
    routed = check_notebook_params(names, dict(notebook_params or {}))
    if resume and overrides:
        _check_resume_overrides(run_dir, cfg)
    if resume:
        lock = RunLock(run_dir, "run --resume")  # refused while another process runs or trains it
        try:
            _check_writable(reports_root, "reports")
            _check_reports_owner(reports_root, run_id, run_dir)
            if overrides:  # e.g. --set train.epochs=20 to extend a finished run: keep it in the record
                atomic_write_text(run_dir / "params.yaml", dump_config(cfg))
            copied = {"copied_from": old.get("run_id")} if old.get("run_id") != run_id else {}
            write_manifest(
                run_dir,
                status="running",
                resumed_at=now_iso(),
                pid=os.getpid(),
                host=platform.node(),
                failure=None,
                run_id=run_id,
                **copied,
            )
        except BaseException:
            lock.release()
            raise
        params_arg = str(run_dir / "params.yaml")
    else:
        _check_writable(reports_root, "reports")
        _check_reports_owner(reports_root, run_id, Path(runs_root).resolve() / run_id)
        run_dir = create_run_dir(Path(runs_root).resolve(), run_id)
        lock = RunLock(run_dir, "run")
        try:
            atomic_write_text(run_dir / "params.yaml", dump_config(cfg))
            params_arg = str(Path(params_path).resolve())
            start_manifest(run_dir, run_id, params_arg, overrides, cfg.train.seed, cfg.name)
        except BaseException:
            lock.release()
            raise
    try:
        write_manifest(run_dir, reports_root=str(reports_root))  # where notebooks run by hand mark the reports
        with Signals():
            _run_stages(run_dir, run_id, names, routed, reports_root, params_arg, overrides, resume, only, con)
    finally:
        lock.release()
    con.summary(headline(run_dir), _display_path(reports_root / "index.html"))
    return run_dir


def _run_stages(
    run_dir: Path,
    run_id: str,
    names: list[str],
    routed: dict[str, dict[str, Any]],
    reports_root: Path,
    params_arg: str,
    overrides: list[str],
    resume,
    only,
    con,
) -> None:
    stages: dict[str, Any] = read_json(run_dir / "manifest.json").get("stages", {})
    name = names[0]
    try:
        (reports_root / run_id).mkdir(parents=True, exist_ok=True)
        record_run(reports_root, run_dir)
        con.header(run_id, _display_path(run_dir))
        for name in names:
            if resume and not only and stages.get(name, {}).get("status") == "succeeded" and name != "02_train":
                con.skipped(name)
                continue
            con.stage_start(name)
            t0 = time.time()
            extra = {"resume": bool(resume)} if name == "02_train" else {}
            extra.update(routed[name])
            # Executing from the run's resolved params keeps re-runs honest; overrides already applied.
            # `--resume RUN --only NN` re-runs the latest tweak of NN made in Jupyter with its parameters.
            stage_params, stage_overrides = (
                (params_arg, overrides) if not resume else (str(run_dir / "params.yaml"), [])
            )
            tweak = tweaks.pending(read_json(run_dir / "manifest.json"), name) if resume and only else None
            if tweak is not None:
                stage_params = tweak["params_path"] or stage_params
                stage_overrides = list(tweak["overrides"])
            err: BaseException | None = None
            try:
                _execute(name, run_dir, stage_params, stage_overrides, extra, con.sink())
            except Exception as exc:  # a failing cell (execute_notebook raises the cell's error)
                err = exc
            except KeyboardInterrupt as exc:  # a signal while no cell ran (the kernel starting...)
                err = exc
            secs = round(time.time() - t0, 1)
            executed = run_dir / "notebooks" / f"{name}.ipynb"
            if executed.is_file():
                try:
                    manifest = (
                        tweaks.settle(run_dir, name, tweak) if err is None else read_json(run_dir / "manifest.json")
                    )
                    render_html(
                        executed,
                        reports_root / run_id / f"{name}.html",
                        tweak_note=tweaks.report_note(manifest, name, run_dir),
                    )
                except OSError as exc:  # a full disk: the stage's report is lost, so the stage failed
                    err = err or exc
            if Stop.signum is not None:
                stages[name] = {"status": "interrupted", "seconds": secs}
                raise _interrupted(run_dir, reports_root, stages, name)
            stages[name] = {"status": "failed" if err else "succeeded", "seconds": secs}
            if tweak is not None:
                stages[name]["tweak"] = tweak["at"]
            con.stage_end(name, stages[name]["status"], secs)
            if err is not None:
                line = failure_line(name, err)
                if isinstance(err, KernelDied):  # nothing in the kernel could record it: say how to go on
                    line += f"; resume with: {resume_command(run_dir)}"
                raise StudyFailed(_mark_failed(run_dir, reports_root, stages, line)) from err
            write_manifest(run_dir, stages=stages)
        write_manifest(run_dir, status="succeeded", ended_at=now_iso(), stages=stages)
        record_run(reports_root, run_dir)
    except OSError as exc:  # the runner's own records (manifest, run page, index) could not be written
        line = f"writing the run's records failed: {type(exc).__name__}: {exc}"
        raise StudyFailed(_mark_failed(run_dir, reports_root, stages, line)) from exc
    except KeyboardInterrupt:  # a signal between stages
        raise _interrupted(run_dir, reports_root, stages, name) from None


def _interrupted(run_dir: Path, reports_root: Path, stages: dict[str, Any], name: str) -> StudyInterrupted:
    signum = Stop.signum or signal.SIGINT
    how = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
    kept = "last.pt holds the last completed epoch" if name == "02_train" else "files of completed stages are kept"
    line = f"{name}: interrupted by {how}; {kept}; continue with: {resume_command(run_dir)}"
    return StudyInterrupted(_mark_failed(run_dir, reports_root, stages, line, status="interrupted"), signum)


def resume_command(run_dir: Path) -> str:
    """The command that continues a stopped run, as the user would type it from here."""
    return f"python -m lvmlib run --resume {_display_path(run_dir)}"


def _display_path(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
