"""The ledger of confirmatory reads (lvmlib.core.confirm) and the evaluation's guard (issue 27)."""

from __future__ import annotations

import json
import subprocess

import pytest
from test_evaluate import make_fake_run

from lvmlib.core.confirm import committed, read_ledger, record_read
from lvmlib.core.errors import ProtocolError
from lvmlib.eval.evaluate import evaluate_run

TEST_SET = {"path": "corpora/wiki_extra_3000.jsonl.gz", "first": 2500, "articles": 500, "reserved": [2500, 3000]}


def _git_repo(tmp_path, text="# protocol\nprimary: R@5 in the held-out bank\n"):
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    proto = repo / "docs" / "confirmatory.md"
    proto.write_text(text)
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "root")
    return repo, proto, git


def test_a_read_needs_a_committed_protocol_and_a_second_study_is_refused(tmp_path):
    repo, proto, git = _git_repo(tmp_path)
    ledger = tmp_path / "reads.jsonl"
    with pytest.raises(ProtocolError, match="not committed as it is on disk"):
        record_read(proto, "s1", "runs/a", TEST_SET, ledger=ledger)
    git("add", "docs/confirmatory.md")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "protocol")
    assert committed(proto)
    first = record_read(proto, "s1", "runs/a", TEST_SET, ledger=ledger)
    again = record_read(proto, "s1", "runs/b", TEST_SET, ledger=ledger)  # the same study's next run: one read
    assert first["studies_under_protocol"] == again["studies_under_protocol"] == 1 and not again["forced"]
    with pytest.raises(ProtocolError, match=r"already read under .*confirmatory.md .*by study 's1'.*force_read"):
        record_read(proto, "s2", "runs/c", TEST_SET, ledger=ledger)
    forced = record_read(proto, "s2", "runs/c", TEST_SET, force=True, ledger=ledger)
    assert forced["studies_under_protocol"] == 2 and forced["forced"]
    rows = read_ledger(ledger)
    assert [r["study"] for r in rows] == ["s1", "s1", "s2"] and rows[-1]["forced"] and rows[0]["commit"]
    proto.write_text(proto.read_text() + "edited after the read\n")  # an edited protocol is uncommitted: refused
    with pytest.raises(ProtocolError, match="not committed"):
        record_read(proto, "s3", "runs/d", TEST_SET, ledger=ledger)
    with pytest.raises(ProtocolError, match="eval.study is empty"):
        record_read(proto, "", "runs/d", TEST_SET, ledger=ledger)
    ledger.write_text(ledger.read_text() + "not json\n")
    with pytest.raises(ProtocolError, match=r"reads.jsonl:4: not a JSON line"):
        read_ledger(ledger)


def test_the_evaluation_of_a_confirmatory_test_split_goes_through_the_ledger(tmp_path):
    """A run whose summary.json says its test split is a reserved range: refused without eval.protocol; with
    a committed protocol the read is recorded and eval.json carries it; any other run's eval is untouched."""
    repo, proto, git = _git_repo(tmp_path)
    git("add", "docs/confirmatory.md")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "protocol")
    ledger = tmp_path / "reads.jsonl"
    run = tmp_path / "run"
    cfg = make_fake_run(run, overrides=[f"eval.ledger={ledger}"])
    summ = json.loads((run / "data" / "summary.json").read_text())
    (run / "data" / "summary.json").write_text(json.dumps({**summ, "test_path": TEST_SET}))
    with pytest.raises(ProtocolError, match="test split is the confirmatory set .*set eval.protocol"):
        evaluate_run(cfg, run, progress=False)
    assert not ledger.exists()
    cfg.eval.protocol, cfg.eval.study = str(proto), "confirm-1"
    ev = evaluate_run(cfg, run, progress=False)
    assert ev["confirmatory_read"]["study"] == "confirm-1" and ev["confirmatory_read"]["studies_under_protocol"] == 1
    assert [r["run"] for r in read_ledger(ledger)] == [str(run)]
    cfg.eval.split = "val"  # val is no read of the confirmatory set
    assert evaluate_run(cfg, run, progress=False, out_dir=tmp_path / "v")["confirmatory_read"] is None
    assert len(read_ledger(ledger)) == 1
