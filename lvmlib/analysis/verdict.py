"""The comparison page's opening paragraph, written from the numbers: which variant is better, and how surely.

The comparison page's opening paragraph, generated from the numbers: which variant is better on the
primary bank's R@5, by how much, whether the difference exceeds the 95% intervals (the paired
bootstrap over test articles when both runs scored the same queries, else non-overlap of the
per-run intervals), and whether each variant beats the best trivial baseline on the same queries.

Input: score cards (`compare.scorecard`), the paired difference (`compare.paired_difference`).
"""

from __future__ import annotations

import math
from typing import Any


def _pct(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.1%}"


def _ci_txt(ci: tuple[float, float]) -> str:
    return "" if not all(math.isfinite(v) for v in ci) else f" [95% CI {ci[0]:.1%}–{ci[1]:.1%}]"


def beats_baseline(card: dict[str, Any]) -> dict[str, Any] | None:
    """Same rule as gates.phase1_decision: above the best baseline on R@5 *and* cosine."""
    b = card.get("best_baseline")
    if b is None:
        return None
    r5, cos = card["recall_at_5"] > b["recall_at_5"], card["pred_target_cosine"] > b["pred_target_cosine"]
    clear = card["recall_at_5_ci"][0] > (
        b["recall_at_5_ci"][1] if math.isfinite(b["recall_at_5_ci"][1]) else b["recall_at_5"]
    )
    return {"beats": bool(r5 and cos), "r5": bool(r5), "cosine": bool(cos), "clear": bool(r5 and cos and clear)}


def verdict(
    cards: list[dict[str, Any]], paired: dict[str, Any] | None = None, same_queries: bool = True
) -> dict[str, Any]:
    """One paragraph, generated from the numbers, answering "which variant is better?".

    `cards`: `scorecard` dicts. `paired`: optional {"a", "b", "delta", "ci": (lo, hi)} — the paired
    bootstrap of R@5(a) - R@5(b) over articles when both runs scored the same queries.
    `same_queries`: False adds a warning that the runs were scored on different test sets.
    Returns {"text", "headline", "better", "runner_up", "delta_r5", "ratio", "separated",
    "separation", "beats_baseline": {label: bool|None}}.
    """
    ok = [c for c in cards if c.get("evaluated")]
    missing = [c["label"] for c in cards if not c.get("evaluated")]
    out: dict[str, Any] = {
        "better": None,
        "runner_up": None,
        "delta_r5": None,
        "ratio": None,
        "separated": None,
        "separation": None,
        "beats_baseline": {c["label"]: None for c in cards},
    }
    miss_txt = (
        (
            f" {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no Phase-1 evaluation "
            f"(status: {', '.join(c['status'] for c in cards if not c.get('evaluated'))})."
        )
        if missing
        else ""
    )
    if not ok:
        out.update(
            text="No run has a Phase-1 evaluation yet, so there is nothing to compare." + miss_txt,
            headline="no evaluated runs",
        )
        return out
    ok.sort(key=lambda c: c["recall_at_5"], reverse=True)
    best = ok[0]
    bank = f"the {best['bank']} bank" + (
        f" ({int(best['n_queries']):,} test queries)"
        if best.get("n_queries") and math.isfinite(best["n_queries"])
        else ""
    )
    parts: list[str] = []
    if len(ok) == 1:
        parts.append(
            f"Only {best['label']} was evaluated: R@5 {_pct(best['recall_at_5'])}"
            f"{_ci_txt(best['recall_at_5_ci'])} on {bank}."
        )
        head = f"{best['label']} only: R@5 {_pct(best['recall_at_5'])}"
    else:
        second = ok[1]
        d = best["recall_at_5"] - second["recall_at_5"]
        ratio = best["recall_at_5"] / second["recall_at_5"] if second["recall_at_5"] > 0 else math.inf
        lo_b, hi_s = best["recall_at_5_ci"][0], second["recall_at_5_ci"][1]
        if (
            paired
            and {paired.get("a"), paired.get("b")} == {best["label"], second["label"]}
            and all(math.isfinite(v) for v in paired["ci"])
        ):
            sign = 1 if paired["a"] == best["label"] else -1
            lo, hi = sorted((sign * paired["ci"][0], sign * paired["ci"][1]))
            separated, how = lo > 0, "paired"
            sep_txt = (
                f"the paired bootstrap interval of the difference ({lo * 100:+.1f} to {hi * 100:+.1f} points, "
                f"resampling test articles) {'excludes' if separated else 'includes'} zero"
            )
        elif math.isfinite(lo_b) and math.isfinite(hi_s):
            separated, how = lo_b > hi_s, "intervals"
            sep_txt = "the two 95% intervals do not overlap" if separated else "the two 95% intervals overlap"
        else:
            separated, how, sep_txt = None, None, "no confidence intervals were recorded"
        out.update(
            better=best["label"],
            runner_up=second["label"],
            delta_r5=d,
            ratio=ratio if math.isfinite(ratio) else None,
            separated=separated,
            separation=how,
        )
        times = f", {ratio:.1f}× as often" if math.isfinite(ratio) and ratio >= 1.05 else ""
        if d == 0:
            parts.append(
                f"{best['label']} and {second['label']} tie on {bank}: both reach R@5 {_pct(best['recall_at_5'])}."
            )
            head = f"tie: R@5 {_pct(best['recall_at_5'])}"
        elif separated:
            parts.append(
                f"**{best['label']} is better.** On {bank} it puts the true next chunk in the top 5 for "
                f"{_pct(best['recall_at_5'])}{_ci_txt(best['recall_at_5_ci'])} of queries against "
                f"{_pct(second['recall_at_5'])}{_ci_txt(second['recall_at_5_ci'])} for {second['label']} — "
                f"{d * 100:+.1f} points{times}. The difference exceeds the uncertainty: {sep_txt}."
            )
            head = (
                f"{best['label']} better: R@5 {_pct(best['recall_at_5'])} vs {_pct(second['recall_at_5'])} "
                f"({d * 100:+.1f} pts, beyond the 95% intervals)"
            )
        else:
            parts.append(
                f"**No clear winner.** {best['label']} is ahead on {bank} with R@5 "
                f"{_pct(best['recall_at_5'])}{_ci_txt(best['recall_at_5_ci'])} against "
                f"{_pct(second['recall_at_5'])}{_ci_txt(second['recall_at_5_ci'])} for {second['label']} "
                f"({d * 100:+.1f} points{times}), but {sep_txt}: on these queries the difference is "
                f"within the uncertainty{'' if separated is None else ' — treat them as tied'}."
            )
            head = (
                f"no clear winner: {best['label']} {_pct(best['recall_at_5'])} vs {second['label']} "
                f"{_pct(second['recall_at_5'])} ({d * 100:+.1f} pts, "
                f"{'no intervals recorded' if separated is None else 'within the 95% intervals'})"
            )
        cos_best, cos_second = best["pred_target_cosine"], second["pred_target_cosine"]
        if math.isfinite(cos_best) and math.isfinite(cos_second):
            agree = cos_best >= cos_second
            parts.append(
                f"Mean predicted→target cosine {cos_best:.3f} vs {cos_second:.3f}"
                f"{'' if agree else ' — the cosine ranks them the other way'}."
            )
    beat_lines, heads, bases = [], [], set()
    for c in ok:
        b = beats_baseline(c)
        out["beats_baseline"][c["label"]] = None if b is None else b["beats"]
        if b is None:
            continue
        bb = c["best_baseline"]
        bases.add((bb["name"], bb["recall_at_5"], bb["pred_target_cosine"]))
        if b["beats"]:
            beat_lines.append(
                f"{c['label']} beats it"
                f"{' clearly (its R@5 interval lies above)' if b['clear'] else ', though not beyond the intervals'}"
            )
        else:
            what = " and ".join(w for w, v in (("R@5", not b["r5"]), ("cosine", not b["cosine"])) if v)
            beat_lines.append(f"{c['label']} falls short on {what}")
        heads.append(f"{c['label']} {'beats' if b['beats'] else 'below'} baseline")
    if beat_lines:
        if len(bases) == 1:  # one shared baseline (same queries): name it once
            name, r5, cos = next(iter(bases))
            base_txt = f"the best trivial baseline, {name} (R@5 {_pct(r5)}, cosine {cos:.3f}) on the same queries"
        else:
            base_txt = (
                "the best trivial baseline of its own evaluation ("
                + "; ".join(
                    f"{c['label']}: {c['best_baseline']['name']} R@5 {_pct(c['best_baseline']['recall_at_5'])}"
                    for c in ok
                    if c.get("best_baseline")
                )
                + ")"
            )
        flags = [v for v in out["beats_baseline"].values() if v is not None]
        if not any(flags):
            parts.append(
                f"**{'Neither variant beats' if len(ok) > 1 else 'It does not beat'}** {base_txt}: "
                + "; ".join(beat_lines)
                + ". The next-chunk signal learned here is not yet worth more "
                "than copying or averaging the context."
            )
        else:
            parts.append(f"Against {base_txt}: " + "; ".join(beat_lines) + ".")
    if len(ok) > 1 and not same_queries:
        parts.append(
            "Caution: the runs were scored on different test queries (different data), so their "
            "numbers are not directly comparable."
        )
    out["text"] = " ".join(parts) + miss_txt
    out["headline"] = (
        head
        + ("; " + ", ".join(heads) if heads else "")
        + (f"; not evaluated: {', '.join(missing)}" if missing else "")
    )
    return out
