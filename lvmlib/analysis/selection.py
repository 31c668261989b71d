"""Pick one recipe among trained runs on VAL articles only: `python -m lvmlib select RUN [RUN ...]`.

Each run's checkpoint (best.pt: its best val-MRR epoch) is evaluated by `evaluate.evaluate_run` on
**every** val window (`eval.split: val`, written to RUN/metrics_val/ and reused when present): the same
code, primary bank and paired article bootstrap as the test evaluation. Per run it reads
`gates.best_baseline`: the R@5 difference to the best R@5 baseline and the cosine difference to the best
cosine baseline, each with its paired 95% interval, and turns each into z = difference / SE (SE =
interval width / 3.92). The pick maximises min(z_R@5, z_cosine): the recipe whose weaker half is
strongest; a run whose weaker z is not above 0 clears no val bar and is never picked. Runs with extra
training articles (`data.extra_train_path`) rank among a bigger bank: their R@5 levels are not comparable
with other runs', their paired differences to the baselines of their own bank are. Nothing here reads
test articles. (This is the rule of issue 11's rounds 4-5, `docs/training.md`: `--rule bank`.)

`--rule curve` (the default; issue 30, written down in docs/evaluation.md before any run it judges) reads
the val evaluation's bank-size curve instead (`eval.json["bank_curve"]`: val targets ranked among the val
chunks plus 0 .. all bank-only distractor chunks). Its R@5 half is the paired R@5 difference to copy_last
in the **largest** distractor bank; a run whose paired interval to copy_last lies wholly below 0 at **any**
bank size is disqualified; the cosine half is as above. A run prepared without `data.distractor_path` has
no curve and is refused with the fix.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lvmlib.core.config import load_config, load_run_config
from lvmlib.core.errors import RequestError
from lvmlib.core.runs import read_json
from lvmlib.eval.curve import paired_curve
from lvmlib.eval.evaluate import evaluate_run, safe_name
from lvmlib.train.status import training_summary

VAL_DIR = "metrics_val"
RULES = ("curve", "bank")  # select --rule: the val bank-size curve (default), or the primary bank alone


def z_score(diff: float, ci: list[float]) -> float:
    """diff / SE with SE from a 95% interval (width / 3.92); ±inf for a zero-width interval, 0 for 0."""
    se = (ci[1] - ci[0]) / 3.92
    if se > 0:
        return diff / se
    return math.copysign(math.inf, diff) if diff else 0.0


def val_dir(data: str | Path | None = None, tag: str = "") -> str:
    """The folder of a run that holds its val evaluation: metrics_val, metrics_val_<name> for the val
    evaluation on another prepared corpus `data` (`select --data`), then _<tag> (`select --tag`)."""
    out = VAL_DIR if not data else f"{VAL_DIR}_{safe_name(Path(data).name) or 'data'}"
    return f"{out}_{safe_name(tag)}" if tag else out


def val_card(
    run: str | Path,
    force: bool = False,
    progress: bool = False,
    rule: str = "bank",
    data: str | Path | None = None,
    overrides: list[str] | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """One run's val numbers against the best val baselines (evaluates it first unless RUN/metrics_val/
    already holds a val evaluation and `force` is off); `rule="curve"` adds the bank-size curve's half.
    `data`: evaluate on that prepared run/data dir instead of the run's own data/ (the same bank with
    distractors added, e.g.), into RUN/metrics_val_<name>/. `overrides`: eval.* settings for this val
    evaluation only (fewer baselines or banks, no latency: the numbers the rule reads do not change)."""
    run = Path(run)
    if not (run / "best.pt").is_file():
        raise RequestError(
            f"{run}: no best.pt (train it first: python -m lvmlib run PARAMS --only 01_data --only 02_train)"
        )
    out = run / val_dir(data, tag)
    if force or not (out / "eval.json").is_file():
        bad = [o for o in overrides or [] if not o.startswith("eval.")]
        if bad:
            raise RequestError(f"select --set {bad[0]}: only eval.* settings can change for a val evaluation")
        cfg = load_config(run / "params.yaml", overrides) if overrides else load_run_config(run / "params.yaml")
        cfg.eval.split = "val"
        if data:
            cfg.eval.data_dir = str(data)
        evaluate_run(cfg, run, out_dir=out, progress=progress)
    ev = read_json(out / "eval.json")
    if ev.get("split") != "val":
        raise RequestError(f"{out / 'eval.json'}: split {ev.get('split')!r}, expected 'val' (re-run with --force)")
    bb = ev["gates"]["best_baseline"]
    card = {
        "run": f"{run.name}+{tag}" if tag else run.name,
        "n": ev["n_queries"],
        "epoch": training_summary(run)["best_epoch"],
        "mrr": ev["mrr"],
        "r5": ev["recall_at_5"],
        "b_r5_name": bb["name_recall_at_5"],
        "d_r5": bb["diff_recall_at_5"],
        "ci_r5": bb["diff_recall_at_5_ci"],
        "cos": ev["pred_target_cosine"],
        "b_cos_name": bb["name_cosine"],
        "d_cos": bb["diff_cosine"],
        "ci_cos": bb["diff_cosine_ci"],
    }
    card = with_z(card)
    return with_curve(card, ev, out / "eval.json") if rule == "curve" else card


def with_curve(card: dict[str, Any], ev: dict[str, Any], where: Path | str) -> dict[str, Any]:
    """Add the curve rule's numbers: R@5 minus copy_last in the largest distractor bank (d_big, ci_big,
    z_big), the bank sizes where the model is significantly worse than copy_last (worse_at), and the score
    min(z_big, z_cos), -inf when `worse_at` is not empty."""
    rows = paired_curve(ev, "copy_last")
    if not rows:
        raise RequestError(
            f"{where}: no bank-size curve in this val evaluation; prepare the run's data with "
            "data.distractor_path (e.g. corpora/wiki_distract_2000.jsonl.gz) and re-run select with --force, "
            "or judge on the primary bank alone with --rule bank"
        )
    big = rows[-1]
    card["curve_size"], card["curve_rows"] = big["size"], big["n_bank"]
    card["d_big"], card["ci_big"] = big["diff_recall_at_5"], big["diff_recall_at_5_ci"]
    card["z_big"] = z_score(card["d_big"], card["ci_big"])
    card["worse_at"] = [r["size"] for r in rows if r["diff_recall_at_5_ci"][1] < 0]
    card["curve"] = [(r["size"], r["diff_recall_at_5"], r["diff_recall_at_5_ci"]) for r in rows]
    card["min_z"] = -math.inf if card["worse_at"] else min(card["z_big"], card["z_cos"])
    return card


def with_z(card: dict[str, Any]) -> dict[str, Any]:
    """Add z_r5, z_cos and their minimum (the rule's score) to a card holding d_r5/ci_r5, d_cos/ci_cos."""
    card["z_r5"], card["z_cos"] = z_score(card["d_r5"], card["ci_r5"]), z_score(card["d_cos"], card["ci_cos"])
    card["min_z"] = min(card["z_r5"], card["z_cos"])
    return card


def pick(cards: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The card with the largest min z, or None when no run's weaker half is above 0 (first wins a tie)."""
    best = max(cards, key=lambda c: c["min_z"], default=None)
    return best if best is not None and best["min_z"] > 0 else None


def table(cards: list[dict[str, Any]]) -> str:
    """The markdown table `select` prints (docs/training.md quotes it)."""
    lines = [
        f"{cards[0]['n']} val queries per run (every val window), primary bank; best = the best val baseline",
        "| run | best epoch | val MRR | val R@5 | R@5 − best (paired 95%) | z | val cosine | cosine − best (paired 95%) | z | min z |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cards:
        lines.append(
            f"| {c['run']} | {c['epoch']} | {c['mrr']:.4f} | {c['r5']:.2%} | {c['d_r5'] * 100:+.2f} "
            f"[{c['ci_r5'][0] * 100:+.2f}, {c['ci_r5'][1] * 100:+.2f}] vs {c['b_r5_name']} | {c['z_r5']:+.2f} | "
            f"{c['cos']:.4f} | {c['d_cos']:+.4f} [{c['ci_cos'][0]:+.4f}, {c['ci_cos'][1]:+.4f}] vs "
            f"{c['b_cos_name']} | {c['z_cos']:+.2f} | {c['min_z']:+.2f} |"
        )
    return "\n".join(lines)


def curve_table(cards: list[dict[str, Any]]) -> str:
    """The markdown table of the curve rule: the largest distractor bank's R@5 edge over copy_last, the
    sizes where the model loses significantly, the cosine half."""
    lines = [
        f"{cards[0]['n']} val queries per run; R@5 − copy_last in the largest distractor bank (paired 95%); "
        "a run significantly below copy_last at any bank size is out",
        "| run | best epoch | largest bank (distractors / rows) | R@5 − copy_last | z | significantly worse at "
        "| cosine − best (paired 95%) | z | score | R@5 − copy_last at each size (* = interval excludes 0) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cards:
        worse = ", ".join(f"{s:,}" for s in c["worse_at"]) or "no size"
        lines.append(
            f"| {c['run']} | {c['epoch']} | {c['curve_size']:,} / {c['curve_rows']:,} | {c['d_big'] * 100:+.2f} "
            f"[{c['ci_big'][0] * 100:+.2f}, {c['ci_big'][1] * 100:+.2f}] | {c['z_big']:+.2f} | {worse} | "
            f"{c['d_cos']:+.4f} [{c['ci_cos'][0]:+.4f}, {c['ci_cos'][1]:+.4f}] vs {c['b_cos_name']} | "
            f"{c['z_cos']:+.2f} | {c['min_z']:+.2f} | {_curve_cell(c.get('curve', []))} |"
        )
    sizes = [f"{x[0]:,}" for x in cards[0].get("curve", [])]
    if sizes:
        lines.append(f"(sizes, distractors added: {' / '.join(sizes)})")
    return "\n".join(lines)


def _curve_cell(curve: list[tuple[int, float, list[float]]]) -> str:
    """Points of R@5 − copy_last per bank size, '*' where the paired interval excludes 0."""
    star = lambda ci: "*" if ci[0] > 0 or ci[1] < 0 else ""
    return " / ".join(f"{100 * d:+.1f}{star(ci)}" for _, d, ci in curve)


def select(
    runs: list[str | Path],
    force: bool = False,
    progress: bool = False,
    rule: str = "curve",
    reference: str | Path | None = None,
    data: str | Path | None = None,
    overrides: list[str] | None = None,
    tag: str = "",
    pools: list[str] | None = None,
) -> str:
    """The table and the pick line for these runs, as `python -m lvmlib select` prints them; with `reference`
    (one of the runs), also every other run minus it on the same val queries (`versus_reference_val`); with
    `pools` ("NAME=RUN,RUN,..." each: one recipe's seeds), each recipe's seeds pooled per query and every pool
    minus the first (`versus_pools`)."""
    if not runs:
        raise RequestError("select: give one or more trained run directories")
    if rule not in RULES:
        raise RequestError(f"select --rule {rule!r}: choose one of {', '.join(RULES)}")
    if reference is not None and Path(reference).resolve() not in {Path(r).resolve() for r in runs}:
        raise RequestError(f"select --reference {reference}: not one of the runs given")
    cards = [val_card(r, force, progress, rule, data, overrides, tag) for r in runs]
    best = pick(cards)
    verdict = (
        f"pick: {best['run']} (min z {best['min_z']:+.2f})"
        if best
        else "pick: none ("
        + (
            "every run is significantly below copy_last at some bank size, or not above it in the largest bank "
            "or on cosine"
            if rule == "curve"
            else "no run clears both val baselines"
        )
        + ")"
    )
    out = (curve_table(cards) if rule == "curve" else table(cards)) + "\n" + verdict
    if reference is not None:
        out += "\n\n" + versus_reference_val(runs, reference, val_dir(data, tag))
    if pools:
        out += "\n\n" + versus_pools(parse_pools(pools, runs), val_dir(data, tag))
    return out


def parse_pools(pools: list[str], runs: list[str | Path]) -> dict[str, list[str]]:
    """["R=runs/a,runs/b", "C=runs/c,runs/d"] -> {"R": [...], "C": [...]}; every run must be one of `runs`."""
    given = {Path(r).resolve() for r in runs}
    out: dict[str, list[str]] = {}
    for p in pools:
        name, sep, members = p.partition("=")
        paths = [m for m in members.split(",") if m]
        if not sep or not name or not paths:
            raise RequestError(f"select --pool {p!r}: expected NAME=RUN[,RUN...], e.g. R=runs/r-s0,runs/r-s1")
        for m in paths:
            if Path(m).resolve() not in given:
                raise RequestError(f"select --pool {p!r}: {m} is not one of the runs given")
        out[name] = paths
    if len(out) < 2:
        raise RequestError("select --pool: give two pools or more (the first is the reference)")
    return out


def versus_pools(pools: dict[str, list[str]], metrics_dir: str = VAL_DIR, n_boot: int = 1000) -> str:
    """Each pool (one recipe's seeds) averaged per val query — hit@5 and cosine of the primary bank — then every
    pool minus the first, paired over the same queries, 95% article-bootstrap intervals. Pooling seeds puts some
    of the training's own variation into the comparison; one seed each measures only the queries."""
    from lvmlib.analysis.compare import load_run, primary_ranks
    from lvmlib.analysis.confirmatory import KEYS, pooled
    from lvmlib.metrics import article_bootstrap

    means, keys = {}, None
    for name, members in pools.items():
        frames = []
        for m in members:
            q = primary_ranks(load_run(m, metrics_dir))
            if q is None:
                raise RequestError(f"{m}: no per-query val ranks in {metrics_dir}/ (run select on it first)")
            q = q.sort_values(KEYS).reset_index(drop=True)
            if keys is None:
                keys = q[KEYS]
            elif len(q) != len(keys) or not (q[KEYS].to_numpy() == keys.to_numpy()).all():
                raise RequestError(f"{m}: scored other val queries than {next(iter(pools.values()))[0]}")
            frames.append(q)
        means[name] = pooled(frames, 5)
    ref = next(iter(pools))
    lines = [
        f"seeds pooled per val query, minus {ref} ({len(pools[ref])} run(s)):",
        "| pool | runs | R@5 | Δ R@5 (points) | cosine | Δ cosine |",
        "|---|---|---|---|---|---|",
    ]
    articles = keys["article_id"].to_numpy()
    for name, m in means.items():
        row = f"| {name} | {len(pools[name])} | {m['hit'].mean() * 100:.2f}% |"
        if name == ref:
            lines.append(row + f" – | {m['cosine'].mean():.4f} | – |")
            continue
        d = {"hit": m["hit"] - means[ref]["hit"], "cosine": m["cosine"] - means[ref]["cosine"]}
        ci = article_bootstrap(d, articles, n_boot=n_boot)
        lines.append(
            row + f" {d['hit'].mean() * 100:+.2f} [{ci['hit'][0] * 100:+.2f}, {ci['hit'][1] * 100:+.2f}] | "
            f"{m['cosine'].mean():.4f} | {d['cosine'].mean():+.4f} [{ci['cosine'][0]:+.4f}, {ci['cosine'][1]:+.4f}] |"
        )
    return "\n".join(lines)


def versus_reference_val(runs: list[str | Path], reference: str | Path, metrics_dir: str = VAL_DIR) -> str:
    """Every run minus `reference` on the val queries both scored (their metrics_val/, written by `val_card`):
    paired R@5 and cosine differences of the primary bank with 95% article-bootstrap intervals."""
    from lvmlib.analysis.compare import load_run, paired_difference

    ref = load_run(reference, metrics_dir)
    lines = [
        f"paired on val, minus {ref.run_dir.name}:",
        "| run | Δ R@5 (points) | Δ cosine | queries / articles |",
        "|---|---|---|---|",
    ]
    for r in runs:
        run = load_run(r, metrics_dir)
        if run.run_dir == ref.run_dir:
            continue
        d = paired_difference(run, ref)
        if d is None:
            lines.append(f"| {run.run_dir.name} | not paired (different val queries) | | |")
            continue
        cos = (
            f"{d['delta_cosine']:+.4f} [{d['ci_cosine'][0]:+.4f}, {d['ci_cosine'][1]:+.4f}]" if d["ci_cosine"] else "–"
        )
        lines.append(
            f"| {run.run_dir.name} | {d['delta'] * 100:+.2f} [{d['ci'][0] * 100:+.2f}, {d['ci'][1] * 100:+.2f}] | {cos} | "
            f"{d['n_queries']:,} / {d['n_articles']} |"
        )
    return "\n".join(lines)
