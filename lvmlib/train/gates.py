"""The study's gates: the epoch-2 validation-cosine gate with its decision tree, and Phase-1 rules.

Epoch-2 tree (seed): val_cosine at epoch `gates.epoch` (2)
  >= threshold (0.50)          -> `continue`
  in [lower (0.40), threshold) -> `extend`: keep training, but stop unless val_cosine
                                  improves on its gate-epoch value within `extend_epochs` (2) more epochs
  <  lower                     -> `stop_option_4`: stop; try the two-tower model (the seed's Option 4)

Phase 1 (seed) on the primary bank: R@5 > r5_meaningful (10%) -> `proceed_phase_2`;
0 < R@5 <= 10% -> `weak`; R@5 == 0 -> `option_4_or_5`. Cosine bar 0.35 (V1 reached 0.22).
Because trivial predictors already clear those absolute bars on our data, every verdict also says
whether the model beats the best baseline on the same queries, and `gates.against: best_baseline` runs
the tree itself on bars relative to the best trivial predictor's val cosine (threshold = that cosine,
lower = that cosine - (threshold - lower)); `absolute` (the default) is the seed's rule.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lvmlib.core.config import Config, GatesConfig
from lvmlib.core.errors import DataError
from lvmlib.core.runs import atomic_write_json, read_json

# Names written before the gate epoch was configurable; runs on disk keep them, `upgrade` reads them.
OLD_KEYS = {"epoch2_val_cosine": "gate_val_cosine"}
OLD_DECISIONS = {"extend_2_epochs": "extend"}


def upgrade(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A gates.json, history.json or headline record with today's names, whichever kit version wrote it:
    `epoch2_val_cosine` -> `gate_val_cosine`, decision `extend_2_epochs` -> `extend`. A new dict."""
    if not isinstance(record, dict):
        return record
    out = {OLD_KEYS.get(k, k): v for k, v in record.items()}
    for k in ("decision", "gate_decision"):
        if isinstance(out.get(k), str):
            out[k] = OLD_DECISIONS.get(out[k], out[k])
    if isinstance(out.get("tree_log"), list):
        out["tree_log"] = [upgrade(r) for r in out["tree_log"]]
    return out


def _val(history: list[dict], epoch: int) -> float | None:
    for rec in history:
        if rec.get("epoch") == epoch:
            v = rec.get("val_cosine")
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    return None


def bars(g: GatesConfig, best_baseline: float | None = None) -> tuple[float, float, str]:
    """(threshold, lower, what they are) of the epoch gate under `gates.against`."""
    if g.against == "best_baseline":
        if best_baseline is None:
            raise DataError(
                "gates.against = best_baseline needs the best trivial predictor's val cosine "
                "(data/summary.json from the data stage)"
            )
        return best_baseline, best_baseline - (g.threshold - g.lower), "relative to the best baseline"
    return g.threshold, g.lower, "absolute"


def epoch_gate(history: list[dict[str, Any]], g: GatesConfig, best_baseline: float | None = None) -> dict[str, Any]:
    """Classify the gate epoch's val_cosine; `decision` is None while the gate epoch is not reached.
    `best_baseline`: the best trivial predictor's val cosine (used when gates.against = best_baseline)."""
    v = _val(history, g.epoch)
    threshold, lower, against = bars(g, best_baseline)
    g = g.model_copy(update={"threshold": threshold, "lower": lower})
    out: dict[str, Any] = {
        "gate_epoch": g.epoch,
        "gate_val_cosine": v,
        "threshold": g.threshold,
        "lower": g.lower,
        "extend_epochs": g.extend_epochs,
        "against": against,
    }
    if v is None:
        out.update(
            passed=None,
            decision=None,
            branch=None,
            reason=f"epoch {g.epoch} not reached (history has {len(history)} epoch(s))",
        )
        return out
    if v >= g.threshold:
        out.update(
            passed=True,
            decision="continue",
            branch="pass",
            reason=f"val_cosine {v:.4f} >= {g.threshold:.2f} at epoch {g.epoch}: continue training",
        )
    elif v >= g.lower:
        out.update(
            passed=False,
            decision="extend",
            branch="borderline",
            reason=(
                f"val_cosine {v:.4f} in [{g.lower:.2f}, {g.threshold:.2f}) at epoch {g.epoch}: "
                f"continue, but stop unless it improves within {g.extend_epochs} more epochs"
            ),
        )
    else:
        out.update(
            passed=False,
            decision="stop_option_4",
            branch="fail",
            reason=(
                f"val_cosine {v:.4f} < {g.lower:.2f} at epoch {g.epoch}: stop and try the two-tower model (Option 4)"
            ),
        )
    return out


def in_loop_action(history: list[dict[str, Any]], g: GatesConfig, best_baseline: float | None = None) -> dict[str, Any]:
    """Called after every epoch by the trainer: should training stop because of the decision tree?

    Returns {"stop": bool, "decision": str|None, "reason": str}. Only the tree is judged here;
    early stopping on patience is the trainer's own business.
    """
    gate = epoch_gate(history, g, best_baseline)
    last = history[-1]["epoch"] if history else 0
    if gate["decision"] is None:
        return {"stop": False, "decision": None, "reason": gate["reason"]}
    if gate["decision"] == "stop_option_4":
        return {"stop": True, "decision": "stop_option_4", "reason": gate["reason"]}
    if gate["decision"] == "extend":
        v_gate = gate["gate_val_cosine"]
        later = [r["val_cosine"] for r in history if g.epoch < r["epoch"] <= g.epoch + g.extend_epochs]
        improved = any(x is not None and x > v_gate for x in later)
        if last >= g.epoch + g.extend_epochs and not improved:
            return {
                "stop": True,
                "decision": "extend",
                "reason": (
                    f"val_cosine did not improve on epoch {g.epoch}'s {v_gate:.4f} within "
                    f"{g.extend_epochs} more epochs: stop"
                ),
            }
        return {
            "stop": False,
            "decision": "extend",
            "reason": gate["reason"] + (" — improved, keep going" if improved else ""),
        }
    return {"stop": False, "decision": "continue", "reason": gate["reason"]}


def phase1_decision(
    recall_at_5: float, cosine: float, g: GatesConfig, best_baseline: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The seed's Phase-1 rules, plus the comparison a reviewer asks for first.

    `best_baseline`: {"name", "recall_at_5", "pred_target_cosine"} of the strongest trivial
    predictor on the same queries and bank, or None.
    """
    if recall_at_5 > g.r5_meaningful:
        decision, verdict = "proceed_phase_2", ("strong" if recall_at_5 >= g.r5_strong else "meaningful")
    elif recall_at_5 > g.r5_min:
        decision, verdict = "weak", "weak"
    else:
        decision, verdict = "option_4_or_5", "none"
    out: dict[str, Any] = {
        "decision": decision,
        "r5_verdict": verdict,
        "recall_at_5": recall_at_5,
        "r5_min": g.r5_min,
        "r5_meaningful": g.r5_meaningful,
        "r5_strong": g.r5_strong,
        "pred_target_cosine": cosine,
        "cosine_min": g.cosine_min,
        "cosine_passed": cosine >= g.cosine_min,
        "v1_cosine": g.v1_cosine,
    }
    reason = (
        f"R@5 {recall_at_5:.1%} ({verdict}; >{g.r5_meaningful:.0%} proceeds to Phase 2) and "
        f"cosine {cosine:.3f} ({'>=' if cosine >= g.cosine_min else '<'} {g.cosine_min}; V1 reached "
        f"{g.v1_cosine})"
    )
    if best_baseline is not None:
        beats_r5 = recall_at_5 > best_baseline["recall_at_5"]
        beats_cos = cosine > best_baseline["pred_target_cosine"]
        out["best_baseline"] = best_baseline
        out["beats_best_baseline"] = bool(beats_r5 and beats_cos)
        out["beats_best_baseline_r5"] = bool(beats_r5)
        out["beats_best_baseline_cosine"] = bool(beats_cos)
        reason += (
            f"; best baseline ({best_baseline['name']}) R@5 {best_baseline['recall_at_5']:.1%}, "
            f"cosine {best_baseline['pred_target_cosine']:.3f} -> the model "
            f"{'beats' if beats_r5 and beats_cos else 'does NOT beat'} it"
        )
    out["reason"] = reason
    return out


def baseline_val_cosines(run_dir: str | Path) -> dict[str, float]:
    """Val-split cosines of the trivial predictors measured by 01_data (data/summary.json), if present."""
    path = Path(run_dir) / "data" / "summary.json"
    if not path.is_file():
        return {}
    val = (read_json(path).get("trivial") or {}).get("val") or {}
    return {k: float(v) for k, v in val.items() if k in ("copy_last", "context_mean", "global_mean")}


def write_gates(cfg: Config, run_dir: str | Path) -> dict[str, Any]:
    """Apply the epoch gate to history.json (and the trainer's in-loop decisions) -> gates.json.

    Beside the seed's absolute bar, the gate records whether the epoch-2 val cosine beats the best
    trivial predictor on the same val windows (the context mean alone scores ~0.50 on our data).
    """
    run_dir = Path(run_dir)
    history = [upgrade(r) for r in read_json(run_dir / "history.json")]
    base = baseline_val_cosines(run_dir)
    gate = epoch_gate(history, cfg.gates, max(base.values()) if base else None)
    stops = [r for r in history if r.get("decision_stop")]
    gate["epochs_trained"] = len(history)
    gate["stopped_by_tree"] = bool(stops)
    gate["tree_log"] = [
        {"epoch": r["epoch"], "decision": r.get("decision"), "reason": r.get("decision_reason")}
        for r in history
        if r.get("decision")
    ]
    if stops and stops[0].get("decision_reason") not in gate["reason"]:
        gate["reason"] += f"; training stopped after epoch {stops[0]['epoch']}: {stops[0].get('decision_reason')}"
    elif stops:
        gate["reason"] += f" (training stopped after epoch {stops[0]['epoch']})"
    if gate["decision"] is None:
        gate["reason"] = (
            f"training ended after {len(history)} epoch(s), before the epoch-{cfg.gates.epoch} gate; no decision"
        )
    gate["baselines_val_cosine"] = base
    if base:
        name = max(base, key=base.get)
        gate["best_baseline"] = {"name": name, "val_cosine": base[name]}
        v = gate["gate_val_cosine"]
        gate["beats_best_baseline"] = None if v is None else bool(v > base[name])
    atomic_write_json(run_dir / "gates.json", gate)
    return gate


def summary_markdown(gate: dict[str, Any]) -> str:
    """The gates report's opening lines: verdict, decision and the comparison with the baselines."""
    verdict = {True: "PASSED", False: "NOT passed", None: "not reached"}[gate["passed"]]
    v = gate["gate_val_cosine"]
    lines = [
        f"**Epoch-{gate['gate_epoch']} gate {verdict}** — val cosine {'—' if v is None else f'{v:.3f}'} "
        f"against the bar {gate['threshold']:.2f}.",
        f"**Decision: `{gate['decision']}`** — {gate['reason']}.",
        f"Epochs trained: {gate['epochs_trained']}; stopped by the tree: {'yes' if gate['stopped_by_tree'] else 'no'}.",
    ]
    best = gate.get("best_baseline")
    if best:
        beats = gate.get("beats_best_baseline")
        word = {True: "beats", False: "does NOT beat", None: "cannot yet be compared with"}[beats]
        others = ", ".join(f"{k} {x:.3f}" for k, x in gate["baselines_val_cosine"].items())
        lines.append(
            f"**Against the baselines** (same val windows; {others}): the model {word} the best, "
            f"{best['name']} at {best['val_cosine']:.3f}."
        )
    return "  \n".join(lines)
