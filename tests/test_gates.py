"""The epoch-2 decision tree and the Phase-1 rules on hand-built histories."""

import pytest

from lvmlib.core.config import GatesConfig
from lvmlib.train.gates import epoch_gate, in_loop_action, phase1_decision

G = GatesConfig()


def hist(*vals):
    return [{"epoch": i + 1, "val_cosine": v} for i, v in enumerate(vals)]


@pytest.mark.parametrize(
    "v2, decision, passed",
    [
        (0.50, "continue", True),
        (0.61, "continue", True),
        (0.4999, "extend", False),
        (0.40, "extend", False),
        (0.3999, "stop_option_4", False),
    ],
)
def test_epoch_gate_branches(v2, decision, passed):
    g = epoch_gate(hist(0.3, v2), G)
    assert g["decision"] == decision and g["passed"] is passed and g["gate_val_cosine"] == v2
    assert f"{v2:.4f}" in g["reason"]


def test_gate_not_reached():
    g = epoch_gate(hist(0.6), G)
    assert g["decision"] is None and g["passed"] is None


def test_in_loop_stops_on_option_4_at_epoch_2():
    assert in_loop_action(hist(0.2), G)["stop"] is False
    a = in_loop_action(hist(0.2, 0.3), G)
    assert a["stop"] and a["decision"] == "stop_option_4"


def test_in_loop_extension_stops_without_improvement():
    assert in_loop_action(hist(0.3, 0.45), G)["stop"] is False
    assert in_loop_action(hist(0.3, 0.45, 0.44), G)["stop"] is False  # one more epoch to go
    a = in_loop_action(hist(0.3, 0.45, 0.44, 0.45), G)
    assert a["stop"] and a["decision"] == "extend"


def test_in_loop_extension_continues_on_improvement():
    a = in_loop_action(hist(0.3, 0.45, 0.44, 0.46), G)
    assert not a["stop"]
    assert not in_loop_action(hist(0.3, 0.45, 0.44, 0.46, 0.40, 0.40), G)["stop"]


def test_in_loop_pass_never_stops():
    assert not in_loop_action(hist(0.3, 0.55, 0.2, 0.1), G)["stop"]


@pytest.mark.parametrize(
    "r5, decision, verdict",
    [
        (0.0, "option_4_or_5", "none"),
        (0.05, "weak", "weak"),
        (0.10, "weak", "weak"),
        (0.15, "proceed_phase_2", "meaningful"),
        (0.25, "proceed_phase_2", "strong"),
    ],
)
def test_phase1_rules(r5, decision, verdict):
    d = phase1_decision(r5, 0.4, G)
    assert d["decision"] == decision and d["r5_verdict"] == verdict and d["cosine_passed"]


def test_phase1_compares_with_best_baseline():
    base = {"name": "copy_last", "recall_at_5": 0.26, "pred_target_cosine": 0.42}
    d = phase1_decision(0.25, 0.50, G, base)
    assert d["decision"] == "proceed_phase_2" and d["beats_best_baseline"] is False
    assert d["beats_best_baseline_cosine"] and not d["beats_best_baseline_r5"]
    assert "does NOT beat" in d["reason"]
    assert phase1_decision(0.30, 0.50, G, base)["beats_best_baseline"] is True


def test_write_gates_compares_with_the_baselines(tmp_path):
    import json

    from lvmlib.core.config import Config
    from lvmlib.train.gates import summary_markdown, write_gates

    (tmp_path / "data").mkdir()
    (tmp_path / "history.json").write_text(
        json.dumps(
            [
                {"epoch": 1, "val_cosine": 0.40},
                {"epoch": 2, "val_cosine": 0.45, "decision": "extend", "decision_reason": "r"},
            ]
        )
    )
    (tmp_path / "data/summary.json").write_text(
        json.dumps({"trivial": {"val": {"copy_last": 0.43, "context_mean": 0.51, "global_mean": 0.2}}})
    )
    g = write_gates(Config(), tmp_path)
    assert g["decision"] == "extend" and g["best_baseline"] == {"name": "context_mean", "val_cosine": 0.51}
    assert g["beats_best_baseline"] is False
    assert "does NOT beat" in summary_markdown(g) and "context_mean at 0.510" in summary_markdown(g)
    assert json.loads((tmp_path / "gates.json").read_text())["beats_best_baseline"] is False


def test_gate_against_the_best_baseline_moves_the_bars():
    from lvmlib.train.gates import epoch_gate, in_loop_action

    g = GatesConfig(against="best_baseline")  # threshold 0.50 / lower 0.40 -> best / best - 0.10
    hist = [{"epoch": 1, "val_cosine": 0.45}, {"epoch": 2, "val_cosine": 0.47}]
    assert epoch_gate(hist, GatesConfig())["decision"] == "extend"  # the seed's absolute bar
    assert epoch_gate(hist, g, best_baseline=0.46)["decision"] == "continue"
    out = epoch_gate(hist, g, best_baseline=0.52)
    assert out["decision"] == "extend" and out["threshold"] == 0.52
    assert out["lower"] == pytest.approx(0.42) and out["against"] == "relative to the best baseline"
    assert epoch_gate(hist, g, best_baseline=0.60)["decision"] == "stop_option_4"
    assert in_loop_action(hist, g, best_baseline=0.60)["stop"]
    with pytest.raises(ValueError, match="best_baseline"):
        epoch_gate(hist, g)


def test_upgrade_reads_the_names_of_runs_written_before_issue_14():
    from lvmlib.train.gates import upgrade

    old = {
        "epoch2_val_cosine": 0.41,
        "decision": "extend_2_epochs",
        "gate_decision": "extend_2_epochs",
        "tree_log": [{"epoch": 2, "decision": "extend_2_epochs"}],
        "threshold": 0.5,
    }
    new = upgrade(old)
    assert new == {
        "gate_val_cosine": 0.41,
        "decision": "extend",
        "gate_decision": "extend",
        "tree_log": [{"epoch": 2, "decision": "extend"}],
        "threshold": 0.5,
    }
    assert old["decision"] == "extend_2_epochs"  # the record read from disk is left as it was
    assert upgrade(new) == new and upgrade(None) is None
