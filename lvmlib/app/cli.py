"""Command line: `python -m lvmlib <command> ...` (also installed as `lvm`).

run PARAMS [--set section.key=value ...] [--run-id ID] [--resume RUN_DIR]   the whole study
status RUN                                                                 training progress (RUN: a run id or a path)
verify RUN                                                                 every recorded file against its sha256
eval RUN_DIR --data PAYLOAD_OR_PARAMS                                      score a checkpoint elsewhere
compare RUN_DIR [RUN_DIR ...] [--reference RUN_DIR]                        runs side by side (paired vs a reference)
select RUN_DIR [RUN_DIR ...] [--force] [--reference RUN_DIR] [--pool N=RUN,RUN] [--data DIR]   pick a recipe on val articles only
scaling PARAMS --articles 100,300,1000 [--corpus JSONL] [--set k=v ...]    one run per training-set size + page
study                                                                      V1/V2 pair + comparison
confirm STUDY.yaml [--dry-run] [--jobs N]                                  the confirmatory study + its report
export RUN_DIR --format seed-npz [--out PATH]                              the run's windows in the seed's format
cache {list,clear,verify} [--fix]                                          the embedding cache
check PARAMS                                                               validate a params file
schema [--study] [--out FILE]                                              JSON Schema of a params (or study) file
lab [--port N]                                                             JupyterLab on 127.0.0.1
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _env_defaults() -> None:
    # Offline by default: nothing in the default path may download models or data.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def build_parser() -> argparse.ArgumentParser:
    from lvmlib.core.config import EXPORT_FORMATS

    p = argparse.ArgumentParser(prog="python -m lvmlib", description="lvm-study: latent vector model study kit")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the study (notebooks 01..04) for a params file")
    r.add_argument("params", nargs="?", default="params/default.yaml")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    r.add_argument("--run-id", default=None)
    r.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its last.pt")
    r.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="NOTEBOOK",
        help="run only these notebooks (e.g. --only 04_eval) against --resume RUN_DIR",
    )
    r.add_argument(
        "--param",
        dest="nb_params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra notebook parameter (must be declared by a selected notebook)",
    )
    r.add_argument("--runs-root", default=os.environ.get("LVM_RUNS_DIR", "runs"))
    r.add_argument("--reports-root", default=os.environ.get("LVM_REPORTS_DIR", "reports"))
    loud = r.add_mutually_exclusive_group()
    loud.add_argument("--quiet", action="store_true", help="print only the closing summary (and errors, warnings)")
    loud.add_argument(
        "--verbose",
        action="store_true",
        help="also print every line the notebooks print (training log, evaluation steps)",
    )

    s = sub.add_parser("status", help="training progress of a run (works while it trains)")
    s.add_argument("run_dir", metavar="RUN", help="a run id (a folder under --runs-root) or a run directory's path")
    s.add_argument("--runs-root", default=os.environ.get("LVM_RUNS_DIR", "runs"))

    v = sub.add_parser("verify", help="check every file of a run against the sha256 recorded when it was written")
    v.add_argument("run", help="a run directory, or a run id under --runs-root")
    v.add_argument("--runs-root", default=os.environ.get("LVM_RUNS_DIR", "runs"))

    e = sub.add_parser("eval", help="score a run's checkpoint on another prepared corpus")
    e.add_argument("run_dir")
    e.add_argument("--data", required=True, help="a prepared run dir / data dir, payload .npz, or params YAML")
    e.add_argument("--out", default=None, help="output dir (default RUN_DIR/eval_<name>)")
    e.add_argument("--reports-root", default=os.environ.get("LVM_REPORTS_DIR", "reports"))

    c = sub.add_parser("compare", help="compare runs on one page")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--id", default=None)
    c.add_argument(
        "--reference",
        default=None,
        metavar="RUN_DIR",
        help="measure every other run against this one (paired intervals on the same test queries)",
    )
    c.add_argument("--reports-root", default=os.environ.get("LVM_REPORTS_DIR", "reports"))

    se = sub.add_parser("select", help="pick one recipe among trained runs on val articles only (every val window)")
    se.add_argument("run_dirs", nargs="+")
    se.add_argument("--force", action="store_true", help="re-evaluate even if RUN/metrics_val/eval.json exists")
    se.add_argument(
        "--rule",
        choices=("curve", "bank"),
        default="curve",
        help="curve: the val bank-size curve (largest distractor bank, never significantly below copy_last); "
        "bank: the primary bank alone (issue 11's rule)",
    )
    se.add_argument(
        "--reference",
        metavar="RUN_DIR",
        help="one of the runs: also print every other run minus it, paired on the same val queries",
    )
    se.add_argument(
        "--pool",
        dest="pools",
        action="append",
        default=[],
        metavar="NAME=RUN,RUN",
        help="one recipe's seeds (runs given above), pooled per val query; with two or more, every pool minus the "
        "first, paired (repeat the flag)",
    )
    se.add_argument(
        "--data",
        metavar="DIR",
        help="evaluate every run on this prepared run/data dir (same bank, e.g. with distractors added) "
        "instead of its own data/; results in RUN/metrics_val_<name>/",
    )
    se.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="eval.KEY=VALUE",
        help="eval.* settings for the val evaluation only, e.g. eval.latency_queries=0",
    )
    se.add_argument(
        "--tag",
        default="",
        help="name this val evaluation (RUN/metrics_val[_DATA]_TAG/, the run shown as RUN+TAG): one run scored "
        "under several --set variants",
    )
    se.add_argument(
        "--figure", metavar="PNG", help="also draw every run's val Δ R@5 vs copy_last over the bank sizes into PNG"
    )

    sc = sub.add_parser("scaling", help="one run per training-set size on fixed held-out articles, and the page")
    sc.add_argument("params", nargs="?", help="params file (not with --runs)")
    sc.add_argument("--articles", metavar="N,N,...", help="training-set sizes in articles, e.g. 100,300,1000")
    sc.add_argument(
        "--runs",
        nargs="+",
        default=None,
        metavar="RUN_DIR",
        help="no training: the page from these finished runs (one per size, same held-out articles)",
    )
    sc.add_argument(
        "--metrics-dir",
        default="metrics",
        help="with --runs: each run's folder holding the evaluation to plot (metrics_val: select's val evaluation)",
    )
    sc.add_argument(
        "--corpus", default=None, help="JSONL corpus (sets data.source=jsonl, data.path); default: the params' data"
    )
    sc.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    sc.add_argument("--id", default=None)
    sc.add_argument("--runs-root", default=os.environ.get("LVM_RUNS_DIR", "runs"))
    sc.add_argument("--reports-root", default=os.environ.get("LVM_REPORTS_DIR", "reports"))
    sc.add_argument("--quiet", action="store_true")

    st = sub.add_parser("study", help="run V1 and V2 (plus baselines) at CPU size and compare them")
    st.add_argument("--params", nargs="+", default=["params/study_v1.yaml", "params/study_v2.yaml"])
    st.add_argument("--runs-root", default=os.environ.get("LVM_RUNS_DIR", "runs"))
    st.add_argument("--reports-root", default=os.environ.get("LVM_REPORTS_DIR", "reports"))

    cf = sub.add_parser(
        "confirm", help="train and evaluate every run of a confirmatory study (resumable), then its report"
    )
    cf.add_argument("study", nargs="?", default="params/confirm.yaml", help="the study file (params/confirm.yaml)")
    cf.add_argument("--dry-run", action="store_true", help="check everything and print the runs; train nothing")
    cf.add_argument("--report-only", action="store_true", help="no training: the report from the finished runs")
    cf.add_argument(
        "--jobs", type=int, default=1, help="runs at once, each in its own process (set train.threads in common)"
    )
    cf.add_argument("--runs-root", default=os.environ.get("LVM_RUNS_DIR", "runs"))
    cf.add_argument("--reports-root", default=os.environ.get("LVM_REPORTS_DIR", "reports"))
    cf.add_argument("--quiet", action="store_true")

    x = sub.add_parser("export", help="write a prepared run's windows in another format (seed-npz: payload.npz)")
    x.add_argument("run_dir")
    x.add_argument(
        "--format",
        dest="fmt",
        default="seed-npz",
        choices=EXPORT_FORMATS,
        help="seed-npz: context_sequences [N,K,D], target_vectors [N,D], truth_keys [N,2], split [N]",
    )
    x.add_argument("--out", default=None, help="output file (default RUN_DIR/payload.npz)")

    ca = sub.add_parser("cache", help="see, clear or verify the embedding cache")
    ca.add_argument("action", choices=["list", "clear", "verify"])
    ca.add_argument("--fix", action="store_true", help="verify: move bad shards aside (quarantine/)")
    ca.add_argument("--dir", default="", help="cache dir (default $LVM_CACHE_DIR or ~/.cache/lvm-study)")
    ca.add_argument("--model", default=None, help="clear only this encoder's entries")

    lb = sub.add_parser("lab", help="JupyterLab on 127.0.0.1 with the lvm-study kernel (make lab)")
    lb.add_argument("--port", type=int, default=int(os.environ.get("LVM_LAB_PORT", "8888")))
    lb.add_argument("--token", default=None, help="access token (default: a random one, printed)")

    k = sub.add_parser("check", help="validate a params file (and overrides) without running")
    k.add_argument("params")
    k.add_argument("--set", dest="overrides", action="append", default=[])

    sh = sub.add_parser("schema", help="print the JSON Schema of a params file (params/params.schema.json)")
    sh.add_argument("--out", default=None, metavar="FILE", help="write it to FILE instead")
    sh.add_argument("--study", action="store_true", help="the schema of a study file (params/confirm.schema.json)")
    return p


def _curve_figure(run_dirs: list[str], data: str | None, png: str, tag: str = "") -> None:
    """select --figure: every run's val bank-size curve (Δ R@5 vs copy_last) in one PNG."""
    from lvmlib.analysis.selection import val_dir
    from lvmlib.core.runs import read_json
    from lvmlib.plots.compare import curve_of_runs

    name = lambda r: f"{Path(r).name}+{tag}" if tag else Path(r).name
    fig = curve_of_runs({name(r): read_json(Path(r) / val_dir(data, tag) / "eval.json") for r in run_dirs})
    if fig is None:
        print("no figure: no run's val evaluation has a bank-size curve")
        return
    fig.savefig(png, dpi=110, bbox_inches="tight")
    print(f"figure: {png}")


def main(argv: list[str] | None = None) -> int:
    _env_defaults()
    args = build_parser().parse_args(argv)
    from lvmlib.core.errors import LvmError

    try:
        return _dispatch(args)
    except LvmError as exc:  # bad params or run dir (2); bad data, checkpoint, sanity check, divergence (1)
        print(exc.cli_line(), file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `status RUN | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 0
    except OSError as exc:  # a full disk, a read-only place: one line naming the file, not a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from lvmlib.app.runner import run_study
        from lvmlib.core.config import parse_notebook_params
        from lvmlib.core.errors import StudyFailed, StudyInterrupted

        try:
            run_study(
                args.params,
                args.overrides,
                run_id=args.run_id,
                runs_root=args.runs_root,
                reports_root=args.reports_root,
                resume=args.resume,
                only=args.only,
                progress=not args.quiet,
                notebook_params=parse_notebook_params(args.nb_params),
                verbose=args.verbose,
            )
        except StudyInterrupted as exc:
            print(f"[lvm-study] INTERRUPTED: {exc}", file=sys.stderr)
            return 128 + exc.signum
        except StudyFailed as exc:
            print(f"[lvm-study] FAILED: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "lab":
        from lvmlib.app.lab import main as lab_main

        lab_main(args.port, args.token)
        return 0
    if args.command == "check":
        from lvmlib.core.config import dump_config, load_config

        print(dump_config(load_config(args.params, args.overrides)))
        return 0
    if args.command == "schema":
        import json

        from lvmlib.core.config import params_schema
        from lvmlib.core.study import study_schema

        text = json.dumps(study_schema() if args.study else params_schema(), indent=2) + "\n"
        if args.out is None:
            sys.stdout.write(text)
        else:
            Path(args.out).write_text(text)
            print(f"[lvm-study] schema written to {args.out}")
        return 0
    if args.command == "status":
        from lvmlib.train.status import status

        print(status(args.run_dir, runs_root=args.runs_root))
        return 0
    if args.command == "verify":
        return _verify(args.run, args.runs_root)
    if args.command == "eval":
        from lvmlib.app.studies import evaluate_elsewhere
        from lvmlib.core.errors import StudyFailed

        try:
            out = evaluate_elsewhere(Path(args.run_dir), args.data, out_dir=args.out, reports_root=args.reports_root)
        except StudyFailed as exc:
            print(f"[lvm-study] FAILED: {exc}", file=sys.stderr)
            return 1
        print(f"[lvm-study] evaluation written to {out}")
        return 0
    if args.command == "compare":
        from lvmlib.app.studies import compare_runs

        out = compare_runs(
            [Path(p) for p in args.run_dirs],
            compare_id=args.id,
            reports_root=args.reports_root,
            reference=args.reference,
        )
        print(f"[lvm-study] comparison: {out}")
        return 0
    if args.command == "select":
        from lvmlib.analysis.selection import select

        print(
            select(
                args.run_dirs,
                force=args.force,
                progress=True,
                rule=args.rule,
                reference=args.reference,
                data=args.data,
                overrides=args.overrides,
                tag=args.tag,
                pools=args.pools,
            )
        )
        if args.figure:
            _curve_figure(args.run_dirs, args.data, args.figure, args.tag)
        return 0
    if args.command == "scaling":
        from lvmlib.analysis.scaling import parse_sizes
        from lvmlib.app.studies import scaling_page, scaling_study
        from lvmlib.core.config import ConfigError

        if args.runs:
            if args.params or args.articles:
                raise ConfigError("scaling --runs RUN_DIR ...: takes no PARAMS or --articles (the runs have them)")
            out = scaling_page(
                args.runs,
                scaling_id=args.id,
                reports_root=args.reports_root,
                progress=not args.quiet,
                metrics_dir=args.metrics_dir,
            )
            print(f"[lvm-study] scaling page: {out}")
            return 0
        if not args.params or not args.articles:
            raise ConfigError("scaling: give PARAMS and --articles N,N,... (or --runs RUN_DIR ...)")
        sizes = parse_sizes(args.articles)  # ConfigError naming the bad item
        out = scaling_study(
            args.params,
            sizes,
            corpus=args.corpus,
            overrides=args.overrides,
            scaling_id=args.id,
            runs_root=args.runs_root,
            reports_root=args.reports_root,
            progress=not args.quiet,
        )
        print(f"[lvm-study] scaling page: {out}")
        return 0
    if args.command == "confirm":
        from lvmlib.app.confirm import confirm_report, confirm_study
        from lvmlib.core.study import load_study

        if args.report_only:
            out = confirm_report(
                load_study(args.study),
                args.study,
                Path(args.runs_root).resolve(),
                Path(args.reports_root).resolve(),
                progress=not args.quiet,
            )
        else:
            out = confirm_study(
                args.study,
                runs_root=args.runs_root,
                reports_root=args.reports_root,
                progress=not args.quiet,
                dry_run=args.dry_run,
                jobs=args.jobs,
            )
        if out is not None:
            print(f"[lvm-study] confirmatory report: {out}")
        return 0
    if args.command == "study":
        from lvmlib.app.studies import run_pair_study

        out = run_pair_study(args.params, runs_root=args.runs_root, reports_root=args.reports_root)
        print(f"[lvm-study] study comparison: {out}")
        return 0
    if args.command == "export":
        from lvmlib.data.payload import export_run

        print(f"[lvm-study] exported {export_run(args.run_dir, args.fmt, args.out)}")
        return 0
    if args.command == "cache":
        from lvmlib.data import encoder

        root = encoder.cache_root() if not args.dir else Path(args.dir)
        if args.action == "list":
            recs = encoder.list_cache(root)
            print(f"embedding cache: {root}" + ("" if recs else " (empty)"))
            for r in recs:
                size = f"{r['bytes'] / 1e6:8.1f} MB"
                if r["kind"] == "embeddings":
                    print(
                        f"  {size}  {r['vectors']:>9,} vectors  dim {r['dim']}  {r['encoder']} "
                        f"(max_length {r['max_length']})  [{r['id']}]"
                    )
                else:
                    print(f"  {size}  chunk list [{r['id']}]")
        elif args.action == "verify":
            return _cache_verify(encoder, root, args.fix)
        else:
            n = encoder.clear_cache(root, encoder=args.model)
            print(f"removed {n} cache entr{'y' if n == 1 else 'ies'} from {root}")
        return 0
    raise AssertionError(args.command)


def _verify(run: str, runs_root: str) -> int:
    """`verify RUN`: a line per missing or changed file and exit 1; else one summary line and exit 0."""
    from lvmlib.core.digests import human_size
    from lvmlib.core.runs import verify_run

    run_dir = Path(run) if Path(run).is_dir() or os.sep in run else Path(runs_root) / run
    report = verify_run(run_dir)  # RunError (exit 2) when it is not a run
    if report is None:
        print(f"{run_dir}: no digests recorded (run made before digests)")
        return 0
    for rel, why in report["bad"].items():
        print(f"{rel}: {why}")
    n, size = len(report["intact"]), human_size(sum(report["intact"].values()))
    if report["bad"]:
        print(f"{run_dir}: {len(report['bad'])} file(s) missing or changed, {n} intact ({size})")
        return 1
    print(f"{run_dir}: {n} file{'s' * (n != 1)} intact ({size})")
    return 0


def _cache_verify(encoder, root: Path, fix: bool) -> int:
    """`cache verify [--fix]`: one line per bad shard (exit 1; 0 once --fix moved them aside), else a summary."""
    rep = encoder.verify_cache(root, fix=fix)
    for path, problem in rep["bad"]:
        done = (
            f"moved to {path.parent / encoder.QUARANTINE}/"
            if fix
            else "python -m lvmlib cache verify --fix moves it aside"
        )
        print(f"bad shard: {path}: {problem}; {done} (the next run encodes its chunks again)")
    good = rep["shards"] - len(rep["bad"])
    print(
        f"embedding cache {root}: {good} of {rep['shards']} shard(s) good ({rep['vectors']:,} vectors)"
        + (f", {len(rep['bad'])} moved aside" if fix and rep["bad"] else "")
    )
    return 1 if rep["bad"] and not fix else 0
