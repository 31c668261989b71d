"""`python -m lvmlib confirm STUDY.yaml`: train and evaluate every run of the confirmatory study, then its report.

Runs go in order (headline first, then the learned baselines, then the secondary ones), one per predictor and
seed, with the run ids `lvmlib.core.study.study_runs` gives. A run that finished is not touched again; one that
failed or was interrupted is resumed where it stopped (`run --resume`); so after a crash the same command goes
on. Before any training the study file, every run's params and, when the test split is a reserved article
range, the protocol (committed, not yet read by another study) are checked. Then 07_confirm renders
`reports/<report>.html`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lvmlib.app.execute import run_notebook
from lvmlib.app.runner import run_study
from lvmlib.app.studies import record_page
from lvmlib.core.config import load_config, reserved_range
from lvmlib.core.confirm import LEDGER, committed, protocol_digest, read_ledger
from lvmlib.core.errors import ProtocolError, StudyFailed
from lvmlib.core.paths import NOTEBOOK_DIR
from lvmlib.core.runs import now_iso, read_json
from lvmlib.core.study import Study, load_study, study_runs

CONFIRM_NOTEBOOK = NOTEBOOK_DIR / "07_confirm.ipynb"


def run_state(run_dir: Path) -> str:
    """'absent', 'succeeded' (every stage finished and eval.json exists) or the manifest's status."""
    if not (run_dir / "manifest.json").is_file():
        return "absent"
    status = (read_json(run_dir / "manifest.json") or {}).get("status", "unknown")
    if status == "succeeded" and not (run_dir / "metrics" / "eval.json").is_file():
        return "incomplete"
    return status


def preflight(study: Study, path: str | Path) -> None:
    """ProtocolError before any training when a run would read a reserved test range under a protocol that
    is missing, uncommitted, or already read by another study (unless force_read)."""
    for r in study_runs(study):
        cfg = load_config(r["params"], r["overrides"])
        d = cfg.data
        rng = reserved_range(d.test_path)
        if not rng or d.test_first + max(d.test_articles, 1) <= rng[0] or d.test_first >= rng[1]:
            continue
        protocol_digest(study.protocol)  # missing: one line
        if committed(study.protocol) is None:
            raise ProtocolError(f"{study.protocol}: not committed as it is on disk; commit it before the study starts")
        ledger = Path(cfg.eval.ledger or LEDGER)
        digest = protocol_digest(study.protocol)
        others = sorted({x["study"] for x in read_ledger(ledger) if x.get("sha256") == digest} - {study.study})
        if others and not study.force_read:
            raise ProtocolError(
                f"{path}: the confirmatory set was already read under {study.protocol} by study {others[0]!r}; "
                "a second read needs force_read: true in the study file and is counted"
            )
        return


def confirm_study(
    path: str | Path,
    runs_root: str | Path = "runs",
    reports_root: str | Path = "reports",
    progress: bool = True,
    dry_run: bool = False,
    jobs: int = 1,
) -> Path | None:
    """Every run of the study (finished ones skipped, broken ones resumed), then the report. Returns
    reports/<report>.html (None for a dry run, which only prints the plan). StudyFailed names the run that
    failed and the command that goes on. `jobs` > 1: that many runs at once, each `python -m lvmlib run` in a
    process of its own (set train.threads in `common` so that they share the cores)."""
    study = load_study(path)  # ConfigError before any work
    preflight(study, path)
    runs_root, reports_root = Path(runs_root).resolve(), Path(reports_root).resolve()
    runs = study_runs(study)
    say = (lambda msg: print(f"[lvm-study] confirm {study.study}: {msg}", flush=True)) if progress else (lambda m: 0)
    states = {r["run_id"]: run_state(runs_root / r["run_id"]) for r in runs}
    done = sum(s == "succeeded" for s in states.values())
    say(f"{len(runs)} runs ({done} finished), protocol {study.protocol}, m = {study.m}")
    if dry_run:
        say("every run: --set " + " ".join(study.common))
        for i, r in enumerate(runs, 1):
            own = [o for o in r["overrides"] if o not in study.common and isinstance(o, str)]
            say(f"[{i}/{len(runs)}] {r['run_id']}: {states[r['run_id']]} — {r['params']} --set {' '.join(own)}")
        return None
    t0 = time.time()
    if jobs > 1:
        _parallel(runs, states, runs_root, reports_root, jobs, say, path)
    else:
        _in_turn(runs, states, runs_root, reports_root, progress, say, path)
    say(f"runs done in {(time.time() - t0) / 60:.1f} min; the report")
    return confirm_report(study, path, runs_root, reports_root, progress)


def _in_turn(runs, states, runs_root: Path, reports_root: Path, progress: bool, say, path) -> None:
    """One run after the other, in this process (the runner's own signal handling and console)."""
    for i, r in enumerate(runs, 1):
        rid, state = r["run_id"], states[r["run_id"]]
        if state == "succeeded":
            say(f"[{i}/{len(runs)}] {rid}: finished earlier, kept")
            continue
        say(f"[{i}/{len(runs)}] {rid}: {'resuming (' + state + ')' if state != 'absent' else 'starting'}")
        resume = runs_root / rid if state != "absent" else None  # a finished stage is not run again
        try:
            run_study(
                r["params"],
                [] if resume else r["overrides"],
                run_id=None if resume else rid,
                runs_root=runs_root,
                reports_root=reports_root,
                resume=resume,
                progress=progress,
            )
        except StudyFailed as exc:
            raise StudyFailed(f"{rid}: {exc} — `python -m lvmlib confirm {path}` goes on from there") from exc


def _set(o: str | dict[str, Any]) -> str:
    """An override for the command line: a {key: value} entry (a path, taken as data) as key="value" (YAML)."""
    if isinstance(o, dict):
        ((k, v),) = o.items()
        return f"{k}={json.dumps(v)}"
    return o


def run_command(r: dict[str, Any], state: str, runs_root: Path, reports_root: Path) -> list[str]:
    """The `python -m lvmlib run` that starts (state 'absent') or resumes one run of the study."""
    roots = ["--runs-root", str(runs_root), "--reports-root", str(reports_root), "--quiet"]
    if state != "absent":
        return [sys.executable, "-m", "lvmlib", "run", "--resume", str(runs_root / r["run_id"]), *roots]
    sets = [x for o in r["overrides"] for x in ("--set", _set(o))]
    return [sys.executable, "-m", "lvmlib", "run", r["params"], "--run-id", r["run_id"], *sets, *roots]


def _parallel(runs, states, runs_root: Path, reports_root: Path, jobs: int, say, path) -> None:
    """Up to `jobs` runs at once, each in its own process (its lines in runs/<id>.confirm.log); a failed run does
    not stop the others; Ctrl-C/SIGTERM stops them all (each marks itself interrupted)."""
    todo = [(i, r) for i, r in enumerate(runs, 1) if states[r["run_id"]] != "succeeded"]
    for i, r in enumerate(runs, 1):
        if states[r["run_id"]] == "succeeded":
            say(f"[{i}/{len(runs)}] {r['run_id']}: finished earlier, kept")
    live: dict[str, tuple[subprocess.Popen, Any, float]] = {}
    failed: list[str] = []
    runs_root.mkdir(parents=True, exist_ok=True)
    try:
        while todo or live:
            while todo and len(live) < jobs:
                i, r = todo.pop(0)
                rid, state = r["run_id"], states[r["run_id"]]
                say(f"[{i}/{len(runs)}] {rid}: {'resuming (' + state + ')' if state != 'absent' else 'starting'}")
                log = open(runs_root / f"{rid}.confirm.log", "a", encoding="utf-8")
                proc = subprocess.Popen(
                    run_command(r, state, runs_root, reports_root), stdout=log, stderr=subprocess.STDOUT
                )
                live[rid] = (proc, log, time.time())
            time.sleep(0.5)
            for rid, (proc, log, t) in list(live.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del live[rid]
                if proc.returncode == 0:
                    say(f"{rid}: finished in {(time.time() - t) / 60:.1f} min")
                else:
                    tail = (runs_root / f"{rid}.confirm.log").read_text(errors="replace").strip().splitlines()
                    failed.append(f"{rid}: {tail[-1] if tail else f'exit status {proc.returncode}'}")
                    say(f"{rid}: failed — {failed[-1]}")
    except BaseException:
        for proc, _log, _ in live.values():
            proc.send_signal(signal.SIGTERM)  # the runner marks its run interrupted
        for proc, log, _ in live.values():
            proc.wait()
            log.close()
        raise
    if failed:
        raise StudyFailed(f"{failed[0]} — `python -m lvmlib confirm {path}` goes on from there")


def confirm_report(study: Study, path: str | Path, runs_root: Path, reports_root: Path, progress: bool = True) -> Path:
    """Execute 07_confirm over the finished runs -> reports/<report>.html (+ <report>/confirm.json, and
    confirm_<study>.json: its row in the index)."""
    out_dir = reports_root / study.report
    out_dir.mkdir(parents=True, exist_ok=True)
    html = reports_root / f"{study.report}.html"
    started, t0 = now_iso(), time.time()
    failure = run_notebook(
        CONFIRM_NOTEBOOK,
        out_dir / "07_confirm.ipynb",
        {"study_path": str(Path(path).resolve()), "runs_root": str(runs_root), "out_dir": str(out_dir)},
        html,
        "07_confirm",
        nav=[("all runs", "index.html")],
    )
    rec = read_json(out_dir / "confirm.json") if (out_dir / "confirm.json").is_file() else {}
    record_page(
        reports_root,
        f"confirm_{study.study}",
        "confirm",
        f"confirm {study.study}",
        html,
        started,
        t0,
        failure.line if failure else None,
        rec.get("answer") or (f"confirmatory page failed: {failure.line}" if failure else ""),
        [
            {"run_id": r["run_id"], "label": r["run_id"], "href": f"{r['run_id']}/index.html"}
            for r in study_runs(study)
            if (reports_root / r["run_id"] / "run.json").is_file()
        ],
    )
    if failure is not None:
        raise StudyFailed(f"{failure.line} — see {html}") from failure.exc
    if progress:
        print(f"[lvm-study] confirm {study.study}: {rec.get('answer', '')}\n[lvm-study] report: {html}", flush=True)
    return html
