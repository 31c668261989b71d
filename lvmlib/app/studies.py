"""Studies made of several notebooks: a comparison page, a pair study, a scaling curve, a run evaluated elsewhere.

Each one executes notebooks (`lvmlib.app.execute`) and records pages (`lvmlib.report.pages`); what the
pages compute lives below, in `lvmlib.analysis` and `lvmlib.eval`.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
from pathlib import Path
from typing import Any

from lvmlib.analysis.compare import _maybe_json, _safe, load_runs, new_compare_id, reference_index
from lvmlib.analysis.scaling import _safe as scaling_safe
from lvmlib.app.execute import run_notebook
from lvmlib.app.runner import run_study
from lvmlib.core.config import load_config
from lvmlib.core.errors import CompareFailed, RunError, ScalingFailed, StudyFailed
from lvmlib.core.paths import NOTEBOOK_DIR
from lvmlib.core.runs import atomic_write_json, new_run_id, now_iso, read_json
from lvmlib.data.prepare import prepare_data
from lvmlib.eval.inputs import load_eval_data
from lvmlib.model.checkpoint import load_checkpoint
from lvmlib.model.models import BASELINE_KINDS
from lvmlib.report.pages import record_run, write_index

COMPARE_NOTEBOOK = NOTEBOOK_DIR / "05_compare.ipynb"
SCALING_NOTEBOOK = NOTEBOOK_DIR / "06_scaling.ipynb"


# --------------------------------------------------------------------------- the index's record of a study page
def record_page(
    reports_root: Path,
    name: str,
    kind: str,
    label: str,
    html: Path,
    started: str,
    t0: float,
    failure: str | None,
    verdict: str,
    runs: list[dict[str, Any]],
    **extra: Any,
) -> None:
    """reports/<name>.json, the row `write_index` shows for a page made of several runs (compare, scaling,
    confirm), then the index itself."""
    atomic_write_json(
        reports_root / f"{name}.json",
        {
            "kind": kind,
            "compare_id": label,
            "href": html.name,
            "started_at": started,
            "seconds": round(time.time() - t0, 1),
            "status": "failed" if failure else "succeeded",
            "failure": failure,
            "verdict": verdict,
            "runs": runs,
            **extra,
        },
    )
    write_index(reports_root)


# --------------------------------------------------------------------------- comparisons
def compare_runs(
    run_dirs: list[Path],
    compare_id: str | None = None,
    reports_root: str | Path = "reports",
    progress: bool = False,
    reference: str | Path | None = None,
) -> Path:
    """Execute 05_compare for these runs; writes reports/compare_<id>.html (+ .code.html, .json) and
    rebuilds the index. `reference`: a run folder (added first when not among `run_dirs`) that every
    other run is measured against with paired intervals. Returns the HTML path. Raises CompareFailed with
    a one-line reason."""
    run_dirs = [Path(d) for d in run_dirs]
    if reference and not any(Path(reference).resolve() == d.resolve() for d in run_dirs):
        run_dirs = [Path(reference), *run_dirs]
    runs = load_runs(run_dirs)  # fails fast on a path that is not a run dir
    compare_id = _safe(compare_id) if compare_id else new_compare_id(runs)
    reports_root = Path(reports_root).resolve()
    out_dir = reports_root / f"compare_{compare_id}"
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = reports_root / f"compare_{compare_id}.html"
    started, t0 = now_iso(), time.time()
    pages = {r.run_id: (reports_root / r.run_id / "run.json").is_file() for r in runs}  # runs with reports here
    failure = run_notebook(
        COMPARE_NOTEBOOK,
        out_dir / "05_compare.ipynb",
        {
            "run_dirs": [str(r.run_dir) for r in runs],
            "compare_id": compare_id,
            "out_dir": str(out_dir),
            "reference": str(runs[reference_index(runs, Path(reference).resolve())].run_dir) if reference else "",
        },
        html_path,
        "05_compare",
        nav=[("all runs", "index.html")] + [(r.label, f"{r.run_id}/index.html") for r in runs if pages[r.run_id]],
    )
    summary = _maybe_json(out_dir / "compare.json") or {}
    err, line = (failure.exc, failure.line) if failure else (None, None)
    record_page(
        reports_root,
        f"compare_{compare_id}",
        "compare",
        compare_id,
        html_path,
        started,
        t0,
        line,
        (summary.get("verdict") or {}).get("headline") or (f"comparison failed: {line}" if line else ""),
        [
            {"run_id": r.run_id, "label": r.label, "href": f"{r.run_id}/index.html" if pages[r.run_id] else None}
            for r in runs
        ],
        summary=summary.get("summary", []),
        reference=summary.get("reference"),
        vs_reference=summary.get("vs_reference", []),
    )
    for r in runs:  # their pages list the comparisons they appear in; record_run also rebuilds the index
        if pages[r.run_id]:
            record_run(reports_root, r.run_dir)
    if err is not None:
        raise CompareFailed(f"{line} — see {html_path}") from err
    return html_path


def run_pair_study(
    params_paths: list[str], runs_root: str | Path = "runs", reports_root: str | Path = "reports", progress: bool = True
) -> Path:
    """Run each params file through the whole study (01..04), then compare the runs.

    Every params file is validated before anything runs. A failing run does not stop the others;
    the comparison shows what finished, then CompareFailed names the failure.
    """
    cfgs = [load_config(p) for p in params_paths]  # ConfigError before any work
    t0, run_dirs, failures = time.time(), [], []
    for p, cfg in zip(params_paths, cfgs):
        run_id = new_run_id(cfg.name)
        try:
            run_dirs.append(
                run_study(p, runs_root=runs_root, reports_root=reports_root, run_id=run_id, progress=progress)
            )
        except StudyFailed as exc:
            failures.append(f"{cfg.name}: {exc}")
            if (Path(runs_root) / run_id / "manifest.json").is_file():
                run_dirs.append((Path(runs_root) / run_id).resolve())
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = compare_runs(
        run_dirs,
        compare_id=f"{stamp}-study-{_safe('-vs-'.join(c.name for c in cfgs))}",
        reports_root=reports_root,
        progress=progress,
    )
    minutes = (time.time() - t0) / 60
    print(f"[lvm-study] pair study: {len(run_dirs)} run(s) + comparison in {minutes:.1f} min", flush=True)
    if failures:
        raise CompareFailed("; ".join(failures) + f" — comparison of what ran: {out}")
    return out


# --------------------------------------------------------------------------- scaling curves
def scaling_study(
    params_path: str | Path,
    sizes: list[int],
    corpus: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    scaling_id: str | None = None,
    runs_root: str | Path = "runs",
    reports_root: str | Path = "reports",
    progress: bool = True,
) -> Path:
    """One full run per size (largest first, so a size the corpus cannot hold fails before hours of
    smaller runs), then the scaling page. Returns reports/scaling_<id>.html."""
    extra = list(overrides)
    if corpus is not None:
        if not Path(corpus).is_file():
            raise RunError(f"{corpus}: corpus file not found")
        extra = ["data.source=jsonl", f"data.path={Path(corpus).resolve()}", *extra]
    cfg = load_config(params_path, extra)  # ConfigError before any work
    if not sizes:
        raise RunError("--articles: give at least one size")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    scaling_id = scaling_safe(scaling_id) if scaling_id else f"{stamp}-{scaling_safe(cfg.name)}"
    t0, run_dirs = time.time(), []
    for n in sorted(sizes, reverse=True):
        run_id = new_run_id(f"{cfg.name}-n{n}")
        if progress:
            print(f"[lvm-study] scaling {scaling_id}: {n} training articles -> run {run_id}", flush=True)
        try:
            run_dirs.append(
                run_study(
                    params_path,
                    [*extra, f"data.train_articles={n}"],
                    run_id=run_id,
                    runs_root=runs_root,
                    reports_root=reports_root,
                    progress=progress,
                )
            )
        except StudyFailed as exc:
            raise ScalingFailed(f"size {n}: {exc}") from None
    return scaling_page(run_dirs, scaling_id, reports_root, progress, t0)


def scaling_page(
    run_dirs: list[str | Path],
    scaling_id: str | None = None,
    reports_root: str | Path = "reports",
    progress: bool = True,
    t0: float | None = None,
    metrics_dir: str = "metrics",
) -> Path:
    """The scaling page from finished runs (one per training-set size, the same corpus and held-out
    articles: `06_scaling` checks they share their test queries). `metrics_dir`: each run's folder holding
    the evaluation to plot (`metrics_val`: the val evaluation of `select`). Returns reports/scaling_<id>.html."""
    run_dirs = [Path(d) for d in run_dirs]
    missing = [str(d) for d in run_dirs if not (d / metrics_dir / "eval.json").is_file()]
    if missing:
        raise ScalingFailed(f"{missing[0]}: no {metrics_dir}/eval.json — not an evaluated run")
    t0 = time.time() if t0 is None else t0
    scaling_id = scaling_safe(scaling_id) if scaling_id else f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-runs"
    reports_root = Path(reports_root).resolve()
    out_dir = reports_root / f"scaling_{scaling_id}"
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = reports_root / f"scaling_{scaling_id}.html"
    started = now_iso()
    failure = run_notebook(
        SCALING_NOTEBOOK,
        out_dir / "06_scaling.ipynb",
        {
            "run_dirs": [str(d) for d in run_dirs],
            "scaling_id": scaling_id,
            "out_dir": str(out_dir),
            "metrics_dir": metrics_dir,
        },
        html_path,
        "06_scaling",
        nav=[("all runs", "index.html")],
    )
    err, line = (failure.exc, failure.line) if failure else (None, None)
    rec = {}
    if (out_dir / "scaling.json").is_file():
        rec = read_json(out_dir / "scaling.json")
    runs = [
        {
            "run_id": Path(d).name,
            "label": Path(d).name,
            "href": f"{Path(d).name}/index.html" if (reports_root / Path(d).name / "run.json").is_file() else None,
        }
        for d in run_dirs
    ]
    record_page(
        reports_root,
        f"scaling_{scaling_id}",
        "scaling",
        f"scaling {scaling_id}",
        html_path,
        started,
        t0,
        line,
        (rec.get("verdict") or {}).get("headline") or (f"scaling page failed: {line}" if line else ""),
        runs,
    )
    if err is not None:
        raise ScalingFailed(f"{line} — see {html_path}") from err
    if progress:
        print(
            f"[lvm-study] scaling {scaling_id}: {len(run_dirs)} run(s) in {(time.time() - t0) / 60:.1f} min -> "
            f"{html_path}",
            flush=True,
        )
    return html_path


# --------------------------------------------------------------------------- a run's model on another corpus
def evaluate_elsewhere(
    run_dir: str | Path,
    data: str | Path,
    out_dir: str | Path | None = None,
    reports_root: str | Path = "reports",
    progress: bool = True,
) -> Path:
    """`python -m lvmlib eval RUN_DIR --data X`: score the run's best.pt on another corpus and render
    the 04_eval report for it. X: a prepared run dir or data dir, a seed-format payload .npz, or a
    params YAML (its corpus is prepared first, with the run's encoder and K, into OUT/data).
    Outputs in OUT (default RUN_DIR/eval_<name of X>): eval.json, queries.csv, 04_eval.ipynb;
    the HTML lands in reports/<run_id>/eval_<name>.html. -> OUT

    Every input is checked before anything is written or a kernel starts (RunError, ConfigError,
    CheckpointError, SanityError, DataError: one line); a failure inside the notebook raises
    runner.StudyFailed with one line, after the failed notebook is rendered."""

    run_dir = Path(run_dir).resolve()
    data = Path(data).expanduser().resolve()
    if not (run_dir / "params.yaml").is_file():
        raise RunError(f"{run_dir}: not a run directory (no params.yaml)")
    if not data.exists():
        raise RunError(f"{data}: --data not found (a prepared run or data dir, a payload .npz or a params YAML)")
    run_cfg = load_config(run_dir / "params.yaml")
    ckpt = run_dir / "best.pt"
    dcfg = None
    if data.suffix in (".yaml", ".yml"):
        keep = {k: getattr(run_cfg.data, k) for k in ("encoder", "encoder_max_length", "context_len")}
        dcfg = load_config(data, [{f"data.{k}": v} for k, v in keep.items()])
        if ckpt.is_file() or run_cfg.model.kind not in BASELINE_KINDS:
            load_checkpoint(ckpt)
    elif ckpt.is_file() or run_cfg.model.kind not in BASELINE_KINDS:
        load_checkpoint(ckpt, d_vec=load_eval_data(data).d_vec)  # the data and the checkpoint fit together
    else:
        load_eval_data(data)
    out = Path(out_dir).resolve() if out_dir else run_dir / f"eval_{re.sub(r'[^A-Za-z0-9_.-]+', '_', data.stem)}"
    out.mkdir(parents=True, exist_ok=True)
    if dcfg is not None:
        prepare_data(dcfg, out, progress=progress)
        data = out
    # paths go in as data ({key: value}), never as `key=value` text that YAML would parse (' #' starts a comment)
    overrides = [{"eval.data_dir": str(data)}, {"eval.out_dir": str(out)}]
    executed = out / "04_eval.ipynb"
    html_out = Path(reports_root).resolve() / run_dir.name / f"{out.name}.html"
    failure = run_notebook(
        NOTEBOOK_DIR / "04_eval.ipynb",
        executed,
        {"params_path": "", "run_dir": str(run_dir), "overrides": overrides},
        html_out,
        "eval",
        progress=progress,
    )
    if failure is not None:
        raise StudyFailed(failure.line + f" (report: {html_out})") from failure.exc
    return out
