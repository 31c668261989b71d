"""The command line: check, schema, cache list/clear, clear errors for wrong paths."""

import json
from pathlib import Path

import numpy as np

from lvmlib.app.cli import main
from lvmlib.data.encoder import EmbeddingCache, list_cache, text_digests


def test_check_prints_the_resolved_config(capsys):
    assert main(["check", "params/smoke.yaml", "--set", "train.epochs=4"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 4" in out and "name: smoke" in out


def test_check_names_a_bad_key(capsys):
    assert main(["check", "params/smoke.yaml", "--set", "train.epohcs=4"]) == 2
    assert "train.epohcs" in capsys.readouterr().err


def test_committed_schema_is_what_the_schema_command_prints(capsys, tmp_path):
    committed = Path(__file__).resolve().parent.parent / "params" / "params.schema.json"
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == committed.read_text(), "params/params.schema.json is stale: python -m lvmlib schema --out it"
    assert main(["schema", "--out", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "s.json").read_text() == printed and "s.json" in capsys.readouterr().out
    schema = json.loads(printed)
    assert schema["$defs"]["TrainConfig"]["properties"]["epochs"]["minimum"] == 1


def test_cache_list_and_clear(tmp_path, capsys):
    assert main(["cache", "list", "--dir", str(tmp_path)]) == 0
    assert "(empty)" in capsys.readouterr().out
    cache = EmbeddingCache(tmp_path, "fake-encoder", 16)
    cache.set_dim(4)
    cache.add(text_digests(["a b c", "d e f"]), np.eye(2, 4, dtype=np.float32))
    assert len(list_cache(tmp_path)) == 1
    main(["cache", "list", "--dir", str(tmp_path)])
    listed = capsys.readouterr().out
    assert "2 vectors" in listed and "fake-encoder" in listed and "dim 4" in listed
    assert main(["cache", "clear", "--dir", str(tmp_path)]) == 0
    assert "removed 1 cache entry" in capsys.readouterr().out
    assert list_cache(tmp_path) == []
