"""The command line: check, schema, cache list/clear, clear errors for wrong paths."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import ROOT

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
    study = Path(__file__).resolve().parent.parent / "params" / "confirm.schema.json"
    assert main(["schema", "--study"]) == 0
    printed = capsys.readouterr().out
    assert printed == study.read_text(), "params/confirm.schema.json is stale: python -m lvmlib schema --study --out it"
    assert "family" in json.loads(printed)["properties"]


def test_the_study_file_points_at_and_fits_its_schema():
    import jsonschema
    import yaml

    root = Path(__file__).resolve().parent.parent / "params"
    text = (root / "confirm.yaml").read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=confirm.schema.json"
    jsonschema.validate(yaml.safe_load(text), json.loads((root / "confirm.schema.json").read_text()))


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


# --------------------------------------------------------------------------- bad inputs: one line, no traceback
# (command args, words the line must hold); "{tmp}" is a fresh directory, "{notrun}" a directory that is not a run.
BAD_COMMANDS = [
    ("run-params-missing", ["run", "{tmp}/nope.yaml"], ["nope.yaml", "params file not found"]),
    ("run-bad-run-id", ["run", "params/smoke.yaml", "--run-id", "../../x"], ["--run-id"]),
    ("run-resume-not-a-run", ["run", "--resume", "{notrun}"], ["notrun", "not a run directory"]),
    ("run-bad-backend", ["run", "params/smoke.yaml", "--set", "model.scan=fast"], ["model.scan", "'fast'", "cpu"]),
    ("check-params-missing", ["check", "{tmp}/nope.yaml"], ["nope.yaml", "params file not found"]),
    (
        "check-bad-search-backend",
        ["check", "params/smoke.yaml", "--set", "eval.search_backend=annoy"],
        ["eval.search_backend", "'annoy'", "faiss"],
    ),
    (
        "check-bad-encoder-backend",
        ["check", "params/smoke.yaml", "--set", "data.encoder_backend=tensorrt"],
        ["data.encoder_backend", "'tensorrt'", "openvino"],
    ),
    ("check-bad-device", ["check", "params/smoke.yaml", "--set", "train.device=tpu"], ["train.device", "'tpu'"]),
    ("status-missing", ["status", "{tmp}/nope"], ["nope", "no such run directory"]),
    ("status-not-a-run", ["status", "{notrun}"], ["notrun", "not a run directory"]),
    ("eval-missing", ["eval", "{tmp}/nope", "--data", "{tmp}/payload.npz"], ["nope", "not a run directory"]),
    ("eval-not-a-run", ["eval", "{notrun}", "--data", "{tmp}/payload.npz"], ["notrun", "not a run directory"]),
    ("compare-missing", ["compare", "{tmp}/nope", "{notrun}"], ["nope", "not a run directory"]),
    ("compare-not-a-run", ["compare", "{notrun}", "{notrun}"], ["notrun", "not a run directory"]),
    ("select-missing", ["select", "{tmp}/nope"], ["nope", "no best.pt"]),
    ("select-not-a-run", ["select", "{notrun}"], ["notrun", "no best.pt"]),
    ("export-missing", ["export", "{tmp}/nope"], ["nope", "no prepared data"]),
    ("export-not-a-run", ["export", "{notrun}"], ["notrun", "no prepared data"]),
    ("scaling-bad-sizes", ["scaling", "params/smoke.yaml", "--articles", "100,x"], ["--articles", "'x'"]),
]
_ROOTS = ["--runs-root", "{tmp}/runs", "--reports-root", "{tmp}/reports"]


def _bad_args(args: list[str], tmp_path) -> list[str]:
    notrun = tmp_path / "notrun"
    notrun.mkdir(exist_ok=True)
    (notrun / "notes.txt").write_text("not a run")
    roots = (
        _ROOTS
        if args[0] in ("run", "scaling")
        else ["--reports-root", "{tmp}/reports"] * (args[0] in ("eval", "compare"))
    )
    return [a.format(tmp=tmp_path, notrun=notrun) for a in [*args, *roots]]


def _assert_one_error_line(code: int, err: str, words: list[str]) -> None:
    assert code in (1, 2), (code, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("args, words", [pytest.param(a, w, id=i) for i, a, w in BAD_COMMANDS])
def test_bad_input_to_a_command_is_one_error_line(args, words, tmp_path, capsys):
    argv = _bad_args(args, tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    _assert_one_error_line(code, captured.err, words)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()  # nothing created


@pytest.mark.slow
def test_bad_input_as_a_user_types_it_is_one_error_line(tmp_path):
    """The same through `python -m lvmlib` in a fresh interpreter: the exit status and stderr a user sees."""
    for name in ("status-not-a-run", "eval-missing", "run-bad-backend", "export-not-a-run"):
        _, args, words = next(row for row in BAD_COMMANDS if row[0] == name)
        r = subprocess.run(
            [sys.executable, "-m", "lvmlib", *_bad_args(args, tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        _assert_one_error_line(r.returncode, r.stderr, words)


def test_a_reader_that_leaves_early_is_not_an_error():
    """`python -m lvmlib schema | head -1`: the reader closes the pipe early; no 'error: BrokenPipeError'."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "lvmlib", "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command prints its ~20 kB
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and err == "", err
