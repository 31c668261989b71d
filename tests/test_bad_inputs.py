"""Every bad input of issues 8 and 13, one table (ROWS), one test per row: a clear error, nothing half-written.

Each row builds its bad input in a fresh tmp dir, calls what a user's command reaches — the CLI
(`lvmlib.app.cli.main`, in-process) for params and notebook parameters, the stage function for corpora,
payloads and checkpoints, and for a few rows `python -m lvmlib run` itself (slow) — and asserts:

- the error type, and that the FIRST line of its message names the file, key, line or value (the
  runner shows only that line when a stage fails);
- nothing was half-written: every file and directory under the row's tmp dir is byte-identical
  afterwards, except what the row lists in `may_change` (a failed run's manifest, its executed
  notebook, its report) — so no data files, no `*.tmp`, no staging dir, no eval output, and for
  params errors no run or report directory at all;
- for end-to-end rows, the run is marked failed in manifest.json and reports/index.html and the
  failed notebook is rendered.

`see` names the tests that prove more about the same input (message variants, the runner's failure
path); the whole table is documented in docs/errors.md.
"""

from __future__ import annotations

import bz2
import fnmatch
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import ROOT, SMOKE, CliFailed, D, cli, cli_subprocess, copy_run, snapshot, vectors_npz

from lvmlib.core.config import load_config
from lvmlib.core.errors import CheckpointError, CorpusError, DataError, SanityError
from lvmlib.core.runs import create_run_dir
from lvmlib.data.payload import export_run


# --------------------------------------------------------------------------- the table
@dataclass
class Row:
    id: str
    build: Callable  # (tmp_path, request) -> action; the action must raise `error`
    error: type[BaseException] | tuple
    names: tuple[str, ...]  # what the first line of the message must name
    code: int | None = None  # exit status, for CLI rows
    may_change: tuple[str, ...] = ()  # fnmatch patterns (relative to tmp_path) a failure may touch
    after: Callable | None = None  # (tmp_path) -> None: more checks (run marked failed...)
    see: str = ""
    slow: bool = False


ROWS: list[Row] = []


# ---- params: through the CLI; exit 2 and nothing created (no runs/, no reports/)
def _params_row(id: str, text: str | None, sets: list[str], names: list[str], see: str = "tests/test_config.py"):
    def build(tmp, request):
        if text is None:
            params = SMOKE
        else:
            params = tmp / ("nope.yaml" if text == "MISSING" else "bad.yaml")
            if text != "MISSING":
                params.write_text(text)
        args = [params, *[a for s in sets for a in ("--set", s)]]
        return lambda: cli("run", *args, "--runs-root", tmp / "runs", "--reports-root", tmp / "reports", "--quiet")

    ROWS.append(Row(id, build, CliFailed, tuple(names), code=2, see=see))


_params_row(
    "unknown-key-in-file",
    "data:\n  contex_len: 5\n",
    [],
    ["bad.yaml", "unknown key 'data.contex_len'", "5", "known keys"],
    see="tests/test_config.py::test_bad_params_are_named, "
    "tests/test_runner.py::test_bad_params_fail_before_any_run_dir",
)
_params_row(
    "unknown-key-in-set",
    None,
    ["model.d_modle=64"],
    ["--set model.d_modle=64", "'model.d_modle'", "64"],
    see="tests/test_config.py::test_overrides_apply_and_are_checked",
)
_params_row(
    "wrong-type-in-file", "train:\n  epochs: three\n", [], ["bad.yaml", "'train.epochs'", "expects int", "'three'"]
)
_params_row("wrong-type-in-set", None, ["train.lr=fast"], ["--set train.lr=fast", "'train.lr'", "expects float"])
_params_row(
    "negative-epochs",
    None,
    ["train.epochs=-2"],
    ["smoke.yaml + --set train.epochs=-2", "'train.epochs' = -2", "must be >= 1"],
)
_params_row("context-len-below-1", None, ["data.context_len=0"], ["'data.context_len' = 0", "K must be >= 1"])
_params_row("negative-lambda", None, ["loss.lambda_ar=-0.15"], ["'loss.lambda_ar' = -0.15", "must be >= 0"])
_params_row(
    "both-lambdas-zero",
    None,
    ["loss.lambda_con=0", "loss.lambda_ar=0"],
    ["lambda_con + lambda_ar = 0.0", "at least one weight must be > 0"],
)
_params_row("nan-lambda", None, ["loss.lambda_con=.nan"], ["'loss.lambda_con' = nan", "must be a finite number"])
_params_row("infinite-lr", None, ["train.lr=.inf"], ["'train.lr' = inf", "must be a finite number"])
_params_row(
    "splits-not-summing-to-1",
    None,
    ["data.train_frac=0.7"],
    [
        "smoke.yaml + --set data.train_frac=0.7",
        "data.train_frac + data.val_frac + data.test_frac = 0.7 + 0.1 + 0.1 = 0.9000",
        "must sum to 1",
    ],
)
_params_row(
    "split-fraction-out-of-range",
    None,
    ["data.val_frac=-0.1", "data.test_frac=0.3"],
    ["'data.val_frac' = -0.1", "must be in [0, 1]"],
)
_params_row(
    "split-fraction-zero",
    None,
    ["data.train_frac=0.9", "data.val_frac=0"],
    ["'data.val_frac' = 0.0", "every split needs a positive fraction"],
)
_params_row("params-file-missing", "MISSING", [], ["nope.yaml", "params file not found"])


# ---- notebook parameters: through the CLI; exit 2 before anything is written
def _nb_row(id: str, args: list[str], names: list[str], resume: bool = False, see: str = ""):
    def build(tmp, request):
        extra = []
        if resume:  # an existing run: its manifest and params must stay untouched
            run = copy_run(request.getfixturevalue("tiny_run"), tmp)
            extra = ["--resume", run]
        return lambda: cli(
            "run", SMOKE, *extra, *args, "--runs-root", tmp / "runs", "--reports-root", tmp / "reports", "--quiet"
        )

    ROWS.append(Row(id, build, CliFailed, tuple(names), code=2, see=see))


_nb_row(
    "notebook-param-unknown",
    ["--param", "nope=1"],
    ["notebook parameter 'nope'", "does not exist in 01_data, 02_train, 03_gates, 04_eval"],
    see="tests/test_runner.py::test_unknown_notebook_parameter_is_named",
)
_nb_row(
    "notebook-unknown",
    ["--only", "09_x"],
    ["unknown notebook(s) ['09_x']"],
    see="tests/test_runner.py::test_unknown_notebook_name_is_named",
)
_nb_row(
    "notebook-param-unknown-on-resume",
    ["--only", "03_gates", "--param", "nope=1"],
    ["notebook parameter 'nope'", "does not exist in 03_gates"],
    resume=True,
)
# the way a user ends up with a checkpoint of another shape: resuming with other model params
_nb_row(
    "resume-changes-model-shape",
    ["--only", "02_train", "--set", "model.d_model=64"],
    ["--resume cannot change the model", "last.pt", "model.d_model 32 -> 64"],
    resume=True,
    see="tests/test_model.py::test_checkpoint_of_another_shape_is_refused",
)


# ---- issue 13: run ids, notebook parameters, manifests, history — through the CLI; nothing created or changed
RUN_ID_WORDS = "a run id is 1-128 characters from A-Z a-z 0-9 . _ -"


def _run_id_row(id: str, make_id: Callable[[Path], str]):
    def build(tmp, request):  # runs/ two levels down: '../../x' would land in tmp/x, inside the snapshot
        return lambda: cli(
            "run",
            SMOKE,
            "--run-id",
            make_id(tmp),
            "--runs-root",
            tmp / "a" / "runs",
            "--reports-root",
            tmp / "a" / "reports",
            "--quiet",
        )

    def nothing_outside(tmp):
        assert not (tmp / "x").exists() and not (tmp / "abs").exists() and not (tmp / "a").exists()

    ROWS.append(Row(id, build, CliFailed, ("--run-id", RUN_ID_WORDS), code=2, after=nothing_outside))


_run_id_row("run-id-escapes-runs", lambda tmp: "../../x")
_run_id_row("run-id-absolute", lambda tmp: str(tmp / "abs"))
_run_id_row("run-id-control-char", lambda tmp: "ok\nx")
_nb_row(
    "notebook-param-run-dir",
    ["--param", "run_dir=/elsewhere"],
    ["--param run_dir='/elsewhere'", "'run_dir' is set by `run` itself, not a user parameter"],
)
_nb_row("notebook-param-invalid-yaml", ["--param", "batch=[1,"], ["--param 'batch=[1,'", "value is not valid YAML"])


def _truncated_manifest(tmp, request):
    run = copy_run(request.getfixturevalue("tiny_run"), tmp)
    text = (run / "manifest.json").read_text()
    (run / "manifest.json").write_text(text[: len(text) // 2])
    return lambda: cli("run", "--resume", run, "--only", "03_gates", "--reports-root", tmp / "reports", "--quiet")


ROWS.append(
    Row("manifest-truncated-on-resume", _truncated_manifest, CliFailed, ("manifest.json", "not valid JSON"), code=2)
)


def _truncated_history(tmp, request):
    run = copy_run(request.getfixturevalue("tiny_run"), tmp)
    text = (run / "history.json").read_text()
    (run / "history.json").write_text(text[: len(text) // 2])
    return lambda: cli("status", run)


ROWS.append(
    Row(
        "history-truncated-in-status",
        _truncated_history,
        CliFailed,
        ("history.json", "corrupt (not valid JSON"),
        code=2,
    )
)


def _eval_row(id: str, damage: Callable[[Path, Path], list], error_words: list[str], code: int):
    """`python -m lvmlib eval RUN --data X` with a bad input: one line, no kernel, nothing created."""

    def build(tmp, request):
        run = copy_run(request.getfixturevalue("tiny_run"), tmp)
        export_run(run, out=tmp / "payload.npz")  # the seed's format (python -m lvmlib export)
        args = damage(run, tmp)
        return lambda: cli("eval", *args, "--reports-root", tmp / "reports")

    ROWS.append(
        Row(
            id,
            build,
            CliFailed,
            tuple(error_words),
            code=code,
            see="tests/test_crash_safety.py::test_eval_runs_its_kernel_like_run_and_takes_any_path",
        )
    )


_eval_row(
    "eval-checkpoint-truncated",
    lambda run, tmp: (_truncate("best.pt")(run), [run, "--data", tmp / "payload.npz"])[1],
    ["error: CheckpointError:", "best.pt", "not a readable checkpoint"],
    1,
)
_eval_row(
    "eval-payload-truncated",
    lambda run, tmp: (_truncate_file(tmp / "payload.npz"), [run, "--data", tmp / "payload.npz"])[1],
    ["error: SanityError:", "payload.npz", "not a readable payload .npz"],
    1,
)
_eval_row(
    "eval-run-dir-missing",
    lambda run, tmp: [tmp / "runs" / "nope", "--data", tmp / "payload.npz"],
    ["error:", "nope", "not a run directory"],
    2,
)


def _truncate_file(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ---- corpora: the data stage (lvmlib.data.prepare.prepare_data, what 01_data calls) into a fresh run dir
GOOD_LINE = json.dumps({"title": "Good", "text": "A sentence with more than enough words to make a chunk. " * 4})


def _data_row(
    id: str,
    make_input: Callable[[Path], list[str]],
    error,
    names: list[str],
    see: str = "",
    may_change: tuple[str, ...] = (),
):
    """make_input(tmp) writes the bad input and returns the --set style data overrides."""

    def build(tmp, request):
        over = make_input(tmp) + [f"data.cache_dir={tmp / 'cache'}", "data.min_words=5"]
        cfg = load_config(None, over)
        run = create_run_dir(tmp / "runs", "r")
        from lvmlib.data.prepare import prepare_data

        return lambda: prepare_data(cfg, run, progress=False)

    # the chunk cache may create its (empty) directory; an entry is only written after a complete read
    ROWS.append(Row(id, build, error, tuple(names), see=see, may_change=("cache", "cache/chunks", *may_change)))


def _jsonl(text: str, name: str = "bad.jsonl"):
    def make(tmp):
        (tmp / name).write_text(text)
        return ["data.source=jsonl", f"data.path={tmp / name}"]

    return make


def _truncated_dump(compress: bool):
    """A MediaWiki export of 6 pages, cut after two thirds of its bytes (a download cut short)."""

    def make(tmp):
        page = (
            "<page><title>T{i}</title><ns>0</ns><id>{i}</id><revision><text>Article {i} has a first "
            "sentence of some length. It goes on with a second one.</text></revision></page>\n"
        )
        xml = (
            "<mediawiki>\n<siteinfo><sitename>w</sitename></siteinfo>\n"
            + "".join(page.format(i=i) for i in range(6))
            + "</mediawiki>\n"
        ).encode()
        if compress:
            data, name = bz2.compress(xml), "dump.xml.bz2"
        else:
            data, name = xml, "dump.xml"
        (tmp / name).write_bytes(data[: len(data) * 2 // 3])
        return ["data.source=mediawiki_dump", f"data.path={tmp / name}"]

    return make


def _npz(**replace):
    def make(tmp):
        vectors_npz(tmp / "v.npz", **replace)
        return ["data.source=vectors", f"data.path={tmp / 'v.npz'}"]

    return make


def _jsonl_bytes(tmp, raw: bytes) -> list[str]:
    (tmp / "bad.jsonl").write_bytes(raw)
    return ["data.source=jsonl", f"data.path={tmp / 'bad.jsonl'}"]


def _gz_truncated(tmp):
    import gzip

    full = gzip.compress((GOOD_LINE + "\n").encode() * 50)
    (tmp / "c.jsonl.gz").write_bytes(full[: len(full) // 2])  # a download cut short
    return ["data.source=jsonl", f"data.path={tmp / 'c.jsonl.gz'}"]


_M = 40 * 12
_nan_inf = np.random.default_rng(1).normal(size=(_M, D)).astype(np.float32)
_nan_inf[7, 0], _nan_inf[30, 3] = np.inf, np.nan

_data_row(
    "corpus-path-missing",
    lambda tmp: ["data.source=jsonl", f"data.path={tmp / 'nope.jsonl'}"],
    CorpusError,
    ["nope.jsonl", "corpus file not found", "data.path"],
    see="tests/test_corpus.py::test_missing_path_names_it, tests/test_runner.py::"
    "test_failing_stage_marks_run_failed_and_renders_the_notebook",
)
_data_row(
    "dump-path-missing",
    lambda tmp: ["data.source=mediawiki_dump", f"data.path={tmp / 'nope.xml.bz2'}"],
    CorpusError,
    ["nope.xml.bz2", "corpus file not found"],
)
_data_row(
    "jsonl-malformed-line",
    _jsonl(f'{GOOD_LINE}\n\n{{"title": "C", "text": "unterminated}}\n{GOOD_LINE}\n'),
    CorpusError,
    ["bad.jsonl:3", "malformed JSON"],
    see="tests/test_corpus.py::test_jsonl_malformed_line_names_file_and_line, "
    "tests/test_data.py::test_bad_inputs_fail_cleanly",
)
_data_row(
    "jsonl-line-without-text",
    _jsonl(f'{GOOD_LINE}\n{{"title": "C", "body": "x"}}\n'),
    CorpusError,
    ["bad.jsonl:2", "needs key 'paragraphs' or 'text'", "'body'"],
)
_data_row(
    "jsonl-gz-truncated",
    _gz_truncated,
    CorpusError,
    ["c.jsonl.gz", "unreadable or truncated"],
    see="tests/test_corpus.py::test_truncated_gzip_is_a_clear_error",
)
_data_row(
    "xml-dump-truncated",
    _truncated_dump(compress=False),
    CorpusError,
    ["dump.xml:", "malformed or truncated XML dump"],
    see="tests/test_corpus.py::test_truncated_or_malformed_dump_is_a_clear_error",
)
_data_row(
    "xml-bz2-dump-truncated",
    _truncated_dump(compress=True),
    CorpusError,
    ["dump.xml.bz2", "unreadable or truncated dump"],
)
_data_row(
    "vectors-npz-missing-key",
    _npz(article_ids=None),
    DataError,
    ["v.npz", "missing key 'article_ids'"],
    see="tests/test_data.py::test_vectors_source_bad_npz",
)
_data_row(
    "vectors-npz-wrong-shape",
    _npz(positions=np.zeros(_M - 1, np.int64)),
    DataError,
    ["v.npz", "key 'positions' must have shape [480]", "[479]"],
)
_data_row(
    "vectors-npz-not-a-matrix",
    _npz(vectors=np.ones((_M, 4, 2), np.float32)),
    DataError,
    ["v.npz", "key 'vectors' must have shape [M, D]", "[480, 4, 2]"],
)
_data_row("vectors-npz-nan-inf", _npz(vectors=_nan_inf), DataError, ["v.npz", "2 rows with NaN/inf (first row 7)"])
_data_row(
    "jsonl-not-utf8",
    lambda tmp: _jsonl_bytes(
        tmp, b"\n".join([GOOD_LINE.encode()] * 3 + [b'{"title": "Caf\xe9", "text": "x"}', GOOD_LINE.encode()]) + b"\n"
    ),
    CorpusError,
    ["bad.jsonl:4", "not UTF-8 (byte 0xe9 at column 15)"],
)
_DUP_TEXT = " ".join(f"Sentence number {i} of the one article copied here sixteen times." for i in range(10))
_data_row(
    "duplicate-articles-only",
    _jsonl("".join(json.dumps({"title": f"Copy {i}", "text": _DUP_TEXT}) + "\n" for i in range(16))),
    DataError,
    [
        "bad.jsonl",
        "split 'val' has no window",
        "duplicate text of an earlier split and were removed",
        "the corpus repeats articles",
    ],
    may_change=("cache/chunks/*.jsonl",),
)  # the corpus was read whole: its chunk list is a valid entry
_data_row(
    "k-larger-than-every-article",
    lambda tmp: _npz()(tmp) + ["data.context_len=12"],
    DataError,
    ["v.npz", "no article reaches K+1 = 13 chunks", "data.context_len=12", "the longest of 40 articles has 12"],
    see="tests/test_data.py::test_bad_inputs_fail_cleanly",
)


# ---- a seed-format payload handed to the evaluation (`python -m lvmlib eval RUN --data payload.npz`)
def _payload_row(id: str, damage: Callable[[dict], dict | bytes], names: list[str]):
    def build(tmp, request):
        from lvmlib.eval.evaluate import evaluate_run

        run = copy_run(request.getfixturevalue("tiny_run"), tmp)
        with np.load(export_run(run, out=tmp / "exported.npz")) as z:
            arrays = {k: z[k].copy() for k in z.files}
        bad = damage(arrays)
        path = tmp / "payload.npz"
        if isinstance(bad, bytes):
            path.write_bytes(bad)
        else:
            np.savez(path, **bad)
        cfg = load_config(run / "params.yaml")
        return lambda: evaluate_run(cfg, run, data_dir=path, progress=False)

    ROWS.append(
        Row(id, build, SanityError, tuple(names), see="tests/test_evaluate.py (corrupted context, missing truth key)")
    )


def _drop(key):
    return lambda a: {k: v for k, v in a.items() if k != key}


def _set(key, fn):
    return lambda a: {**a, key: fn(a[key])}


def _nan_target(t):
    t = t.copy()
    t[3] = np.nan
    return t


def _truncated_payload(a):
    buf = io.BytesIO()
    np.savez(buf, **a)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


_payload_row("payload-missing-key", _drop("truth_keys"), ["payload.npz", "no 'truth_keys' array"])
_payload_row(
    "payload-wrong-shape",
    _set("target_vectors", lambda t: t[:, :-1]),
    ["payload.npz", "'target_vectors' has shape", f", {D - 1})", f", {D})"],
)
_payload_row(
    "payload-context-not-3d",
    _set("context_sequences", lambda c: c[:, 0]),
    ["payload.npz", "'context_sequences' has shape", "expected (N, K, D)"],
)
_payload_row("payload-nan-vector", _set("target_vectors", _nan_target), ["payload.npz", "NaN/inf"])
_payload_row("payload-truncated", _truncated_payload, ["payload.npz", "not a readable payload .npz"])


# ---- checkpoints: evaluation (best.pt) and resumed training (last.pt)
def _ckpt_row(id: str, damage: Callable[[Path], None], stage: str, names: list[str], overrides=(), see=""):
    def build(tmp, request):
        run = copy_run(request.getfixturevalue("tiny_run"), tmp)
        damage(run)
        cfg = load_config(run / "params.yaml", list(overrides))
        if stage == "eval":
            from lvmlib.eval.evaluate import evaluate_run

            return lambda: evaluate_run(cfg, run, progress=False)
        from lvmlib.train.loop import train

        return lambda: train(cfg, run, resume=True, progress=False)

    # a training attempt records its failure in train_progress.json (what `lvmlib status` reads)
    ROWS.append(
        Row(
            id,
            build,
            CheckpointError,
            tuple(names),
            see=see,
            may_change=("runs/base/train_progress.json",) if stage == "train" else (),
        )
    )


def _other_width(run):
    import torch

    from lvmlib.model.checkpoint import save_checkpoint
    from lvmlib.model.models import build_model

    cfg = load_config(run / "params.yaml")
    torch.manual_seed(0)
    save_checkpoint(run / "best.pt", build_model(cfg.model, 8), cfg, 8)


def _unrecorded(run: Path, name: str) -> None:
    """Drop `name`'s content digest from the run's manifest, as in a run made before digests: the damaged file
    then reaches its reader (with its digest it is refused as changed first: tests/test_faults_digests.py)."""
    m = json.loads((run / "manifest.json").read_text())
    m.get("files", {}).pop(name, None)
    (run / "manifest.json").write_text(json.dumps(m))


def _garbage(name):
    return lambda run: (_unrecorded(run, name), (run / name).write_bytes(os.urandom(4096)))


def _truncate(name):
    def damage(run):
        _unrecorded(run, name)
        (run / name).write_bytes((run / name).read_bytes()[: (run / name).stat().st_size // 2])

    return damage


_ckpt_row(
    "checkpoint-other-vector-width",
    _other_width,
    "eval",
    ["best.pt", "trained on vectors of width 8", f"asked for width {D}"],
    see="tests/test_model.py::test_checkpoint_of_another_shape_is_refused",
)
_ckpt_row(
    "checkpoint-other-model-shape",
    lambda run: None,
    "train",
    ["last.pt", "checkpoint does not fit a mamba model (d_model=64", "checkpoint (32,"],
    overrides=["model.d_model=64"],
)
_ckpt_row(
    "checkpoint-corrupted",
    _garbage("best.pt"),
    "eval",
    ["best.pt", "not a readable checkpoint"],
    see="tests/test_model.py::test_damaged_checkpoint_names_the_file",
)
_ckpt_row(
    "checkpoint-truncated",
    _truncate("last.pt"),
    "train",
    ["last.pt", "not a readable checkpoint (truncated or corrupted?)"],
)


# ---- end to end through `python -m lvmlib run` (slow): the run is marked failed, the notebook rendered
def _run_failed(run_id: str, stage: str, words: list[str]):
    def check(tmp):
        manifest = json.loads((tmp / "runs" / run_id / "manifest.json").read_text())
        assert manifest["status"] == "failed" and manifest["ended_at"], manifest
        assert manifest["stages"][stage]["status"] == "failed"
        for w in words:
            assert w in manifest["failure"], (w, manifest["failure"])
        rec = json.loads((tmp / "reports" / run_id / "run.json").read_text())
        assert rec["status"] == "failed" and rec["failure"] == manifest["failure"]
        index = (tmp / "reports" / "index.html").read_text()
        assert f"{run_id}/index.html" in index and "<b>failed</b>" in index
        page = (tmp / "reports" / run_id / f"{stage}.html").read_text()  # papermill's error banner, rendered
        for w in words:
            assert w in page, w

    return check


def _e2e_new_run(tmp, request):
    bad = tmp / "bad.jsonl"
    bad.write_text(f'{GOOD_LINE}\n{{"title": \n')
    return lambda: cli_subprocess(
        tmp,
        SMOKE,
        "--set",
        "data.source=jsonl",
        "--set",
        f"data.path={bad}",
        "--run-id",
        "bad",
        cache=request.getfixturevalue("lvm_cache"),
    )


ROWS.append(
    Row(
        "e2e-jsonl-malformed-line",
        _e2e_new_run,
        CliFailed,
        ("FAILED: 01_data", "CorpusError", "bad.jsonl:2", "malformed JSON"),
        code=1,
        slow=True,
        after=_run_failed("bad", "01_data", ["bad.jsonl:2", "malformed JSON"]),
        # a failed run keeps its record and executed notebook; data/ stays empty (no staging, no *.tmp)
        may_change=(
            "runs",
            "runs/bad",
            "runs/bad/data",
            "runs/bad/metrics",
            "runs/bad/notebooks",
            "runs/bad/params.yaml",
            "runs/bad/manifest.json",
            "runs/bad/.manifest.lock",
            "runs/bad/.run.lock",
            "runs/bad/notebooks/01_data.ipynb",
            "reports*",
        ),
        see="tests/test_runner.py::test_failing_stage_marks_run_failed_and_renders_the_notebook (missing path)",
    )
)


def _e2e_resume_corrupt_ckpt(tmp, request):
    run = copy_run(request.getfixturevalue("tiny_run"), tmp)
    _truncate("best.pt")(run)
    return lambda: cli_subprocess(tmp, "--resume", run, "--only", "04_eval", cache=request.getfixturevalue("lvm_cache"))


ROWS.append(
    Row(
        "e2e-checkpoint-truncated",
        _e2e_resume_corrupt_ckpt,
        CliFailed,
        ("FAILED: 04_eval", "CheckpointError", "best.pt", "not a readable checkpoint"),
        code=1,
        slow=True,
        after=_run_failed("base", "04_eval", ["best.pt", "not a readable checkpoint"]),
        # no metrics/eval.json, no queries.csv: only the record of the failure changes
        may_change=("runs/base/manifest.json", "runs/base/notebooks/04_eval.ipynb", "reports*"),
    )
)


# --------------------------------------------------------------------------- the test
@pytest.mark.parametrize("row", [pytest.param(r, marks=[pytest.mark.slow] if r.slow else [], id=r.id) for r in ROWS])
def test_bad_input_gets_one_clear_error_and_nothing_half_written(row: Row, tmp_path, request):
    action = row.build(tmp_path, request)
    before = snapshot(tmp_path)
    with pytest.raises(row.error) as info:
        action()
    lines = str(info.value).strip().splitlines()
    assert lines, f"{row.id}: an error without a message"
    for word in row.names:
        assert word in lines[0], f"{row.id}: first line of the error does not name {word!r}:\n{lines[0]}"
    if row.code is not None:
        assert info.value.code == row.code, (info.value.code, getattr(info.value, "stderr", ""))
        assert "Traceback" not in info.value.stderr, info.value.stderr[-3000:]
    after = snapshot(tmp_path)
    changed = sorted(
        k
        for k in before.keys() | after.keys()
        if before.get(k) != after.get(k) and not any(fnmatch.fnmatch(k, pat) for pat in row.may_change)
    )
    assert not changed, f"{row.id}: the failure wrote or changed {changed}"
    assert not [k for k in after if k.endswith(".tmp") or ".data-staging-" in k], after
    if row.after is not None:
        row.after(tmp_path)


def test_every_row_of_the_issue_is_in_the_table():
    """Issue 8's list of bad inputs, each mapped to at least one row (a removed row fails here)."""
    ids = {r.id for r in ROWS}
    required = {
        "unknown params key": {"unknown-key-in-file", "unknown-key-in-set"},
        "wrong type": {"wrong-type-in-file", "wrong-type-in-set"},
        "negative epochs": {"negative-epochs"},
        "K < 1": {"context-len-below-1"},
        "lambda weights that don't make sense": {"negative-lambda", "both-lambdas-zero", "nan-lambda"},
        "split fractions not summing to 1": {"splits-not-summing-to-1"},
        "missing corpus path": {"corpus-path-missing"},
        "malformed JSONL line": {"jsonl-malformed-line", "e2e-jsonl-malformed-line"},
        "truncated XML dump": {"xml-dump-truncated", "xml-bz2-dump-truncated"},
        "npz missing keys": {"vectors-npz-missing-key", "payload-missing-key"},
        "npz wrong shapes": {"vectors-npz-wrong-shape", "payload-wrong-shape"},
        "npz NaN/inf vectors": {"vectors-npz-nan-inf", "payload-nan-vector"},
        "K larger than every article": {"k-larger-than-every-article"},
        "checkpoint of another model shape": {"checkpoint-other-model-shape", "resume-changes-model-shape"},
        "checkpoint of another vector width": {"checkpoint-other-vector-width"},
        "corrupted or truncated checkpoint": {
            "checkpoint-corrupted",
            "checkpoint-truncated",
            "e2e-checkpoint-truncated",
        },
        "notebook parameter that does not exist": {"notebook-param-unknown", "notebook-unknown"},
        # issue 13 (rows 1, 7, 10-14; rows 2-6, 8, 9 are in tests/test_crash_safety.py)
        "run ids that escape runs/": {"run-id-escapes-runs", "run-id-absolute", "run-id-control-char"},
        "eval inputs checked before a kernel starts": {
            "eval-checkpoint-truncated",
            "eval-payload-truncated",
            "eval-run-dir-missing",
        },
        "truncated manifest / invalid --param YAML": {"manifest-truncated-on-resume", "notebook-param-invalid-yaml"},
        "truncated history.json": {"history-truncated-in-status"},
        "--param run_dir": {"notebook-param-run-dir"},
        "non-UTF-8 byte in a JSONL": {"jsonl-not-utf8"},
        "duplicates-only corpus": {"duplicate-articles-only"},
    }
    missing = {k: v - ids for k, v in required.items() if v - ids}
    assert not missing, missing
    doc = (ROOT / "docs" / "errors.md").read_text()
    undocumented = sorted(i for i in ids if f"`{i}`" not in doc)
    assert not undocumented, f"rows missing from docs/errors.md: {undocumented}"
