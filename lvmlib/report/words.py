"""The headline in words: interval checks and the 'beaten' sentence, shared by the console and the run page."""

from __future__ import annotations

from typing import Any


def _pct(v: Any) -> str:
    return f"{v:.1%}" if isinstance(v, (int, float)) else "—"


def _num(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "—"


def has_interval(ci: Any) -> bool:
    """A [lo, hi] pair with both ends present (what the JSON records hold for a 95% interval)."""
    return isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci


def beaten_text(head: dict[str, Any]) -> str:
    """Whether the model beats the best baseline, in words: the seed's rule compares point estimates;
    with the paired 95% intervals of the differences (eval.json `gates.best_baseline`) it says whether
    both are above zero, and quotes them, so a win inside the noise never reads as a plain 'beaten'."""
    beats = head.get("beats_best_baseline")
    word = "beaten" if beats else "not beaten" if beats is not None else "?"
    ci_r5, ci_cos = head.get("best_baseline_diff_r5_ci"), head.get("best_baseline_diff_cosine_ci")
    if not (has_interval(ci_r5) and has_interval(ci_cos)) or head.get("best_baseline_diff_r5") is None:
        return word
    if beats:
        word = (
            "beaten, both paired intervals above 0"
            if min(ci_r5[0], ci_cos[0]) > 0
            else "beaten on point estimates only: a paired interval reaches 0"
        )
    d_r5, d_cos = head["best_baseline_diff_r5"], head.get("best_baseline_diff_cosine")
    return (
        f"{word}; paired Δ R@5 {d_r5 * 100:+.1f} pts [{ci_r5[0] * 100:+.1f}, {ci_r5[1] * 100:+.1f}], "
        f"Δ cosine {d_cos:+.4f} [{ci_cos[0]:+.4f}, {ci_cos[1]:+.4f}]"
    )
