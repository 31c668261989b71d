"""Crash safety (issues 8 and 13): a non-finite loss, a SIGKILL while embedding, a failed write, two runs
at once and a checkpoint carrying a pickled object each end cleanly: a clear error, the run marked failed,
earlier results kept, nothing half-written. Issue 13: a second trainer on a live run is refused (an OS
lock that dies with its holder), Ctrl-C/SIGTERM interrupt the kernel at once and leave a resumable
`interrupted` run, a copied run is a new run, data/ is published by one rename, huge paragraphs are
split in linear time.

Proved elsewhere, not repeated here: SIGKILL during training then --resume gives the identical
history (tests/test_train.py::test_sigkill_after_epoch_1_then_resume_equals_uninterrupted); atomic
writes keep the old file and leave no temp file (tests/test_runs.py); concurrent record_run /
write_manifest keep every entry (tests/test_runs.py::test_concurrent_runs_never_clobber_the_index,
::test_concurrent_manifest_updates_are_all_kept); an interrupted encode keeps complete shards with a
fake encoder (tests/test_data.py::test_interrupted_embedding_keeps_complete_shards_and_resumes).
"""

from __future__ import annotations

import ast
import errno
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import (  # noqa: F401
    SMOKE,
    CliFailed,
    cli,
    cli_subprocess,
    copy_run,
    make_tiny_run,
    snapshot,
    tiny_overrides,
    vectors_npz,
)

from lvmlib.app import execute, runner
from lvmlib.app.runner import run_study
from lvmlib.core import runs
from lvmlib.core.config import load_config
from lvmlib.core.errors import CheckpointError, RunError, StudyFailed, TrainingDiverged
from lvmlib.data import encoder
from lvmlib.data import prepare as data
from lvmlib.data.payload import export_run
from lvmlib.model.checkpoint import load_checkpoint
from lvmlib.model.models import build_model
from lvmlib.train.loop import train
from lvmlib.train.status import training_summary

ROOT = Path(__file__).resolve().parent.parent


def no_tmp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".data-staging-")]


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


# --------------------------------------------------------------------------- non-finite loss
@pytest.mark.slow
def test_nan_loss_stops_training_keeps_the_last_good_checkpoint_and_renders_the_notebook(tmp_path, tiny_run, lvm_cache):
    """End to end: epoch 1 is on disk; the train rows of the bank then turn to NaN (a corrupted copy),
    so the loss of epoch 2 is NaN. The runner reports the divergence in one line, the run is failed,
    last.pt/best.pt/history.json are those of epoch 1, and 02_train.html shows the error."""
    run = copy_run(tiny_run, tmp_path)
    bank = np.load(run / "data" / "bank_vectors.npy")
    bank[np.load(run / "data" / "bank_split.npy") == 0] = np.nan
    # written as the data stage writes (its digest recorded): a plain np.save would be refused as a changed file
    # before training starts (tests/test_faults_digests.py), and this test is about a loss that turns NaN
    runs.atomic_save_npy(run / "data" / "bank_vectors.npy", bank)
    kept = {n: (run / n).read_bytes() for n in ("last.pt", "best.pt")}
    history = json.loads((run / "history.json").read_text())
    with pytest.raises(CliFailed) as info:
        cli_subprocess(tmp_path, "--resume", run, "--only", "02_train", "--set", "train.epochs=2", cache=lvm_cache)
    line = str(info.value)
    assert info.value.code == 1 and "Traceback" not in info.value.stderr
    assert "FAILED: 02_train" in line and "TrainingDiverged" in line, line
    assert "loss is nan at epoch 2, optimizer step 1" in line, line
    assert f"last good checkpoint kept: {run / 'last.pt'} (epoch 1)" in line, line
    for name, content in kept.items():
        assert (run / name).read_bytes() == content, f"{name} changed by the diverged epoch"
    # resume rewrites history.json from last.pt (saved before the epoch's timing and stop reason): epoch 1 only
    keys = ("epoch", "train_loss", "val_cosine", "val_infonce", "val_recall_at_5", "lr")
    after = json.loads((run / "history.json").read_text())
    assert [[r[k] for k in keys] for r in after] == [[r[k] for k in keys] for r in history] and len(after) == 1
    _, _, ck = load_checkpoint(run / "last.pt")
    assert ck["epoch"] == 1 and len(ck["history"]) == 1
    m = _manifest(run)
    assert m["status"] == "failed" and m["stages"]["02_train"]["status"] == "failed"
    assert "TrainingDiverged" in m["failure"]
    page = (tmp_path / "reports" / "base" / "02_train.html").read_text()
    assert "TrainingDiverged" in page and "last good checkpoint kept" in page
    assert "<b>failed</b>" in (tmp_path / "reports" / "index.html").read_text()
    assert "ERROR training diverged" in (run / "train.log").read_text()
    assert json.loads((run / "train_progress.json").read_text())["state"] == "diverged"
    assert not no_tmp_files(run)


def test_an_exploding_learning_rate_is_caught_as_a_non_finite_loss(tmp_path):
    """No monkeypatching: lr 1e30 overflows the weights after one step; training stops in epoch 1 and,
    with no good epoch yet, writes no checkpoint and no history."""
    cfg = load_config(SMOKE, tiny_overrides(vectors_npz(tmp_path / "c.npz")) + ["train.lr=1e30"])
    run = runs.create_run_dir(tmp_path / "runs", "r")
    data.prepare_data(cfg, run, progress=False)
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, optimizer step \d+; no checkpoint was written yet"):
        train(cfg, run, progress=False)
    assert not any((run / n).exists() for n in ("last.pt", "best.pt", "history.json"))


# --------------------------------------------------------------------------- SIGKILL while embedding
_EMBED = """
import sys
from lvmlib.data import prepare as data
from lvmlib.data import encoder
from lvmlib.core.config import load_config
encoder.FLUSH_EVERY = 16  # commit a cache shard every 16 chunks, so the kill lands between shards
data.prepare_data(load_config(None, sys.argv[2:]), sys.argv[1], progress=False)
"""


@pytest.mark.slow
def test_sigkill_while_embedding_keeps_the_cache_whole_and_the_rerun_embeds_only_the_rest(tmp_path):
    """The real MiniLM encoder in a subprocess, SIGKILLed once >= 2 shards are committed: the cache
    loads, holds only complete entries whose vectors are right, and the re-run encodes exactly the
    chunks that were missing."""
    corpus = tmp_path / "c.jsonl"
    topics = [
        "rivers",
        "castles",
        "comets",
        "violins",
        "glaciers",
        "markets",
        "orchids",
        "bridges",
        "deserts",
        "harbours",
        "volcanoes",
        "libraries",
    ]
    with open(corpus, "w") as fh:
        for a, topic in enumerate(topics):
            sents = [
                f"The {topic} of region {a} were described in survey number {i} by careful observers."
                for i in range(40)
            ]
            fh.write(json.dumps({"title": topic, "paragraphs": [" ".join(sents)]}) + "\n")
    over = [
        "data.source=jsonl",
        f"data.path={corpus}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.min_words=5",
        "data.encode_batch_size=8",
        "data.encoder_backend=torch",
    ]  # compared below with a fresh torch encode
    run = tmp_path / "run"
    run.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", _EMBED, str(run), *over],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    shards = tmp_path / "cache" / "embeddings"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(shards.glob("*/shard-*.keys.npy"))) < 2:
        time.sleep(0.005)
    assert proc.poll() is None, "embedding ended before the kill:\n" + proc.stdout.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    total = 12 * 40  # chunks (one per sentence), ~30 shards: the kill lands early even on a fast machine

    cache = encoder.EmbeddingCache(tmp_path / "cache", encoder.BUNDLED_ENCODER, 256)  # loads: no torn entry
    n_cached = len(cache)
    assert 32 <= n_cached < total, n_cached
    assert [r["vectors"] for r in encoder.list_cache(tmp_path / "cache") if r["kind"] == "embeddings"] == [n_cached]
    assert not (run / "data" / "summary.json").exists()

    s = data.prepare_data(load_config(None, over), run, progress=False)  # same run dir: stale staging removed
    assert s["counts"]["chunks"] == total
    assert s["embedding"]["cache_hits"] == n_cached and s["embedding"]["encoded"] == total - n_cached
    assert not no_tmp_files(run)
    # what the killed process committed is right: equal to a fresh encode of the same texts
    prep = data.load_prepared(run)
    hit = np.flatnonzero(cache.lookup(encoder.text_digests(prep.texts(np.arange(len(prep))))) >= 0)[:8]
    fresh = encoder.Encoder(encoder.BUNDLED_ENCODER, 256).encode(prep.texts(hit))
    np.testing.assert_allclose(np.asarray(prep.bank_vectors[hit]), fresh, atol=1e-5)


# --------------------------------------------------------------------------- failed writes
def _enospc_after(n: int):
    """An os.fsync that works n times, then fails like a full disk."""
    calls, real = [0], os.fsync

    def fsync(fd):
        calls[0] += 1
        if calls[0] > n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    return fsync


def test_disk_full_while_preparing_data_leaves_the_previous_data_dir(tmp_path, monkeypatch):
    run = runs.create_run_dir(tmp_path / "runs", "r")
    data.prepare_data(load_config(SMOKE, tiny_overrides(vectors_npz(tmp_path / "a.npz"))), run, progress=False)
    before = snapshot(run)
    cfg_b = load_config(SMOKE, tiny_overrides(vectors_npz(tmp_path / "b.npz", seed=1)))
    monkeypatch.setattr(os, "fsync", _enospc_after(3))
    with pytest.raises(OSError, match=r"No space left on device: '.*\.data-staging-[^/]+/\w+\.\w+'"):
        data.prepare_data(cfg_b, run, progress=False)
    monkeypatch.undo()
    assert snapshot(run) == before, "a failed data stage changed data/"
    assert not no_tmp_files(run)


def test_data_is_published_by_one_rename_and_a_failed_publish_keeps_the_old_data(tmp_path, monkeypatch):
    """data/ is swapped in whole (rename over an empty data/, renameat2 exchange over a full one): a
    failing publish leaves the previous data/ byte for byte, and a successful one replaces every file."""
    run = runs.create_run_dir(tmp_path / "runs", "r")
    cfg_a = load_config(SMOKE, tiny_overrides(vectors_npz(tmp_path / "a.npz")))
    cfg_b = load_config(SMOKE, tiny_overrides(vectors_npz(tmp_path / "b.npz", seed=1, n_articles=30)))
    data.prepare_data(cfg_a, run, progress=False)
    before = snapshot(run)
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    def exchange_fails(a, b):
        raise OSError(errno.ENOSPC, "No space left on device", str(b))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(data, "_exchange", exchange_fails)
    with pytest.raises(OSError, match="No space left on device"):
        data.prepare_data(cfg_b, run, progress=False)
    monkeypatch.undo()
    assert snapshot(run) == before, "a failed publish changed data/"
    assert not [d for _, d in renames if d.parent == run / "data"], f"files were moved one by one: {renames}"
    assert not no_tmp_files(run)
    s = data.prepare_data(cfg_b, run, progress=False)  # the exchange itself
    assert data.load_prepared(run).summary["counts"] == s["counts"] and s["counts"]["articles"] == 30
    assert sorted(p.name for p in (run / "data").iterdir()) == sorted(data.DATA_FILES)
    assert [p.name for p in run.iterdir() if p.name.startswith(".data-")] == []


@pytest.mark.slow
def test_a_stage_that_cannot_write_fails_the_run_cleanly(tmp_path, tiny_run, lvm_cache):
    """End to end: gates.json cannot be written (a directory stands where the file goes — root ignores
    chmod, this does not): 03_gates fails naming the file, the run is marked failed, nothing else changes."""
    run = copy_run(tiny_run, tmp_path)
    (run / "gates.json").mkdir()
    (run / "gates.json" / "keep").write_text("x")
    before = snapshot(run)
    with pytest.raises(CliFailed) as info:
        cli_subprocess(tmp_path, "--resume", run, "--only", "03_gates", cache=lvm_cache)
    line = str(info.value)
    assert info.value.code == 1 and "FAILED: 03_gates" in line and str(run / "gates.json") in line, line
    m = _manifest(run)
    assert m["status"] == "failed" and m["stages"]["03_gates"]["status"] == "failed"
    assert (tmp_path / "reports" / "base" / "03_gates.html").is_file()
    changed = {k for k in snapshot(run).keys() | before.keys() if snapshot(run).get(k) != before.get(k)}
    assert changed <= {"manifest.json", "notebooks/03_gates.ipynb"}, changed
    assert not no_tmp_files(run)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["render_html", "record_run"])
def test_a_full_disk_in_the_runners_own_writes_fails_the_run_cleanly(tmp_path, tiny_run, monkeypatch, what):
    """The runner's own writes fail (a stage's HTML; the final run page and index): the run is marked
    failed with the path and the reason, instead of a traceback that leaves the manifest 'running'."""
    run = copy_run(tiny_run, tmp_path)
    real, calls = getattr(runner, what), []

    def full_disk(*args, **kw):
        calls.append(args)
        if what == "render_html" or len(calls) == 2:  # record_run: the one after the stage succeeded
            target = args[1] if what == "render_html" else tmp_path / "reports" / "index.html"
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real(*args, **kw)

    monkeypatch.setattr(runner, what, full_disk)
    with pytest.raises(StudyFailed) as info:
        run_study("", resume=run, only=["03_gates"], reports_root=tmp_path / "reports", progress=False)
    line = str(info.value)
    expect = (
        "03_gates: OSError: [Errno 28] No space left on device: "
        if what == "render_html"
        else "writing the run's records failed: OSError: [Errno 28] No space left on device: "
    )
    assert line.startswith(expect) and ("03_gates.html" in line or "index.html" in line), line
    m = _manifest(run)
    assert m["status"] == "failed" and m["failure"] == line and m["ended_at"]
    assert m["stages"]["03_gates"]["status"] == ("failed" if what == "render_html" else "succeeded")
    assert "<b>failed</b>" in (tmp_path / "reports" / "index.html").read_text()
    assert not no_tmp_files(run) and not no_tmp_files(tmp_path / "reports")


def test_a_failed_write_before_the_run_starts_is_one_line_and_changes_nothing(tmp_path, tiny_run, monkeypatch):
    """--resume with an override rewrites params.yaml first; a full disk there -> exit 1, one line
    naming params.yaml, and params.yaml/manifest.json as they were."""
    run = copy_run(tiny_run, tmp_path)
    before = snapshot(run)
    monkeypatch.setattr(os, "fsync", _enospc_after(0))
    with pytest.raises(CliFailed) as info:
        cli(
            "run",
            "--resume",
            run,
            "--only",
            "03_gates",
            "--set",
            "gates.threshold=0.4",
            "--reports-root",
            tmp_path / "reports",
        )
    monkeypatch.undo()
    assert info.value.code == 1 and "Traceback" not in info.value.stderr
    assert str(info.value) == f"error: OSError: [Errno 28] No space left on device: '{run / 'params.yaml'}'"
    assert snapshot(run) == before and not no_tmp_files(tmp_path)


@pytest.mark.parametrize("which", ["reports", "runs"])
def test_an_unwritable_output_root_is_refused_before_the_run_starts(tmp_path, which):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")  # works as root, unlike chmod
    roots = {"runs": tmp_path / "runs", "reports": tmp_path / "reports", which: blocker / which}
    with pytest.raises(CliFailed) as info:
        cli("run", SMOKE, "--runs-root", roots["runs"], "--reports-root", roots["reports"], "--quiet")
    assert info.value.code == 2 and str(blocker / which) in str(info.value)
    why = "cannot write reports here" if which == "reports" else "cannot create the runs directory"
    assert why in str(info.value)
    assert not (tmp_path / "runs").exists(), "a run was created although its reports cannot be written"


# --------------------------------------------------------------------------- concurrency
def _create_same_run_dir(args):
    root, barrier = args
    barrier.wait()
    try:
        runs.create_run_dir(root, "same")
        return "created"
    except RunError as exc:
        return str(exc)


def test_two_runs_racing_for_one_run_id_never_share_the_directory(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(4)
        with ctx.Pool(4) as pool:
            results = pool.map(_create_same_run_dir, [(tmp_path, barrier)] * 4)
    assert results.count("created") == 1, results
    assert all("already exists" in r for r in results if r != "created")


_TEXTS = [f"chunk number {i}" for i in range(120)]


def _vector_of(dig: np.ndarray) -> np.ndarray:
    """(n, 2) digests -> (n, 4) a vector that is a function of the text, so any mix-up shows."""
    return np.repeat((dig[:, :1] % 1000).astype(np.float32), 4, axis=1)


def _cache_writer(args):
    root, order_seed = args
    order = np.random.default_rng(order_seed).permutation(len(_TEXTS))
    cache = encoder.EmbeddingCache(root, "fake-encoder", 16)
    cache.set_dim(4)
    for s in range(0, len(order), 24):  # 5 shards each, the same texts in another order
        dig = encoder.text_digests([_TEXTS[i] for i in order[s : s + 24]])
        cache.add(dig, _vector_of(dig))
    return int((cache.lookup(encoder.text_digests(_TEXTS)) >= 0).sum())


def _cache_reader(args):
    root, seconds = args
    dig = encoder.text_digests(_TEXTS)
    end, checked = time.time() + seconds, 0
    while time.time() < end:  # whatever the writers are doing, a reader sees whole, right entries
        c = encoder.EmbeddingCache(root, "fake-encoder", 16)
        found = c.lookup(dig)
        hit = np.flatnonzero(found >= 0)
        out = np.empty((len(hit), 4), np.float32)
        c.gather(found[hit], out)
        np.testing.assert_array_equal(out, _vector_of(dig[hit]))
        checked += len(hit)
    return checked


def test_concurrent_runs_share_the_embedding_cache_without_clobbering(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        reader = pool.apply_async(_cache_reader, ((tmp_path, 4.0),))
        counts = pool.map(_cache_writer, [(tmp_path, 1), (tmp_path, 2)])
        assert reader.get(timeout=120) > 0
    assert counts == [120, 120]
    cache = encoder.EmbeddingCache(tmp_path, "fake-encoder", 16)
    assert len(cache.shards) == 10, "a shard was overwritten"
    dig = encoder.text_digests(_TEXTS)
    entry = cache.lookup(dig)
    assert (entry >= 0).all()
    out = np.empty((120, 4), np.float32)
    cache.gather(entry, out)
    np.testing.assert_array_equal(out, _vector_of(dig))
    assert not no_tmp_files(tmp_path)


@pytest.mark.slow
def test_runs_started_at_once_keep_their_own_directories_and_the_index(tmp_path, lvm_cache):
    """Three `python -m lvmlib run` at once on one runs/, reports/ and cache: two race for one run id
    (one wins, the other stops before writing anything), the third runs beside them."""
    npz = vectors_npz(tmp_path / "c.npz")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LVM_CACHE_DIR=str(lvm_cache))
    over = [a for o in tiny_overrides(npz) for a in ("--set", o)]

    def start(run_id):
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lvmlib",
                "run",
                str(SMOKE),
                *over,
                "--only",
                "01_data",
                "--run-id",
                run_id,
                "--runs-root",
                str(tmp_path / "runs"),
                "--reports-root",
                str(tmp_path / "reports"),
                "--quiet",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    procs = {"a": start("same"), "b": start("same"), "c": start("other")}
    out = {k: (p.wait(timeout=600), p.communicate()[1], p.pid) for k, p in procs.items()}
    assert out["c"][0] == 0, out["c"][1][-2000:]
    codes = sorted(out[k][0] for k in "ab")
    assert codes == [0, 2], {k: (out[k][0], out[k][1][-1500:]) for k in "ab"}
    winner, loser = ("a", "b") if out["a"][0] == 0 else ("b", "a")
    assert "run directory already exists" in out[loser][1].strip().splitlines()[-1]
    m = _manifest(tmp_path / "runs" / "same")
    assert m["status"] == "succeeded" and m["pid"] == out[winner][2], "the loser touched the winner's manifest"
    for rid in ("same", "other"):
        assert data.load_prepared(tmp_path / "runs" / rid).summary["counts"]["windows"] > 0
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "same/index.html" in index and "other/index.html" in index
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["other", "same"]
    assert not no_tmp_files(tmp_path)


# --------------------------------------------------------------------------- no unpickling of arbitrary code
class _Payload:
    """Unpickling this creates a file: stands for any code a hostile checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _hostile_checkpoint(path: Path, marker: Path, cfg) -> None:
    model = build_model(cfg.model, 32)
    torch.save(
        {"config": cfg.to_dict(), "d_vec": 32, "model": model.state_dict(), "n_params": 1, "extra": _Payload(marker)},
        path,
    )


def _forget_digests(run: Path) -> None:
    """Make `run` a run made before content digests (no `files` in its manifest)."""
    m = json.loads((run / "manifest.json").read_text())
    m.pop("files", None)
    (run / "manifest.json").write_text(json.dumps(m))


def test_a_checkpoint_with_a_pickled_object_is_refused_and_never_run(tmp_path, tiny_run):
    run = copy_run(tiny_run, tmp_path)
    _forget_digests(run)  # else the changed files are refused by their digest (IntegrityError) before any read
    cfg = load_config(run / "params.yaml")
    marker = tmp_path / "code_ran"
    _hostile_checkpoint(tmp_path / "probe.pt", marker, cfg)
    torch.load(tmp_path / "probe.pt", weights_only=False)  # the file really is hostile...
    assert marker.exists()
    marker.unlink()
    for name in ("best.pt", "last.pt"):
        _hostile_checkpoint(run / name, marker, cfg)
    with pytest.raises(CheckpointError, match=r"best\.pt: refused: it holds a pickled object \((io|builtins)\.open\)"):
        load_checkpoint(run / "best.pt")
    from lvmlib.eval.evaluate import evaluate_run

    with pytest.raises(CheckpointError, match=r"best\.pt: refused"):
        evaluate_run(cfg, run, progress=False)
    with pytest.raises(CheckpointError, match=r"last\.pt: refused"):
        train(cfg, run, resume=True, progress=False)
    (run / "train_progress.json").unlink()  # so training_summary reads n_params from best.pt itself
    with pytest.raises(CheckpointError, match=r"best\.pt: refused: it holds a pickled object"):
        training_summary(run)
    assert not marker.exists(), "loading a checkpoint ran code from it"


def test_every_load_in_lvmlib_refuses_pickles():
    """torch.load without weights_only=True, or np.load with allow_pickle=True, anywhere in lvmlib
    would unpickle arbitrary objects from a file someone handed over."""
    offenders = []
    for path in sorted((ROOT / "lvmlib").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
            ):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            flag = lambda k: kw[k].value if isinstance(kw.get(k), ast.Constant) else None
            if node.func.value.id == "torch" and flag("weights_only") is not True:
                offenders.append(f"{path.name}:{node.lineno} torch.load")
            if node.func.value.id == "np" and ("allow_pickle" in kw and flag("allow_pickle") is not False):
                offenders.append(f"{path.name}:{node.lineno} np.load")
    assert not offenders, f"loads that may unpickle: {offenders}"


# --------------------------------------------------------------------------- issue 13: hardening
def test_a_checkpoint_is_refused_by_what_it_holds_not_by_torchs_wording(tmp_path, tiny_run, monkeypatch):
    """The refusal comes from the file's globals, so it survives another torch message; `status`-side
    readers (training_summary) give the same refusal, not torch's advice to set weights_only=False."""
    import pickle

    run = copy_run(tiny_run, tmp_path)
    _forget_digests(run)  # a run made before digests: the refusal comes from what the file holds
    cfg = load_config(run / "params.yaml")
    marker = tmp_path / "code_ran"
    _hostile_checkpoint(run / "best.pt", marker, cfg)
    real = torch.load

    def reworded(*a, **kw):
        try:
            return real(*a, **kw)
        except pickle.UnpicklingError:
            raise pickle.UnpicklingError("some future wording") from None

    monkeypatch.setattr(torch, "load", reworded)
    with pytest.raises(CheckpointError, match=r"best\.pt: refused: it holds a pickled object \((io|builtins)\.open\)"):
        load_checkpoint(run / "best.pt")
    monkeypatch.undo()
    (run / "train_progress.json").unlink()
    with pytest.raises(CheckpointError, match=r"best\.pt: refused: it holds a pickled object"):
        training_summary(run)
    assert not marker.exists()


_HOLD = """
import sys, time
from lvmlib.core.runs import RunLock
lock = RunLock(sys.argv[1], "training")
print("held", flush=True)
time.sleep(600)
"""


def _hold_lock(run: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_run_refuses_a_second_trainer_and_a_dead_holders_lock_is_taken_over(tmp_path, tiny_run):
    """Another process holds the run (a trainer): `run --resume` is refused before anything is written
    (exit 2, naming its pid and host), train() refuses too, `status` says live; once the holder is
    SIGKILLed, `status` says the run is dead and the lock is taken over."""
    import platform

    run = copy_run(tiny_run, tmp_path)
    runs.write_manifest(run, status="running")
    holder = _hold_lock(run)
    try:
        before = snapshot(run)
        with pytest.raises(CliFailed) as info:
            cli("run", "--resume", run, "--only", "03_gates", "--reports-root", tmp_path / "reports", "--quiet")
        assert info.value.code == 2 and "Traceback" not in info.value.stderr
        line = str(info.value)
        assert f"the run is live: pid {holder.pid} on host {platform.node()} (training)" in line, line
        assert "run --resume refused" in line, line
        assert snapshot(run) == before and not (tmp_path / "reports").exists()
        with pytest.raises(RunError, match=f"the run is live: pid {holder.pid}"):
            train(load_config(run / "params.yaml"), run, resume=True, progress=False)
        assert f"live: pid {holder.pid} on host" in _status(run)
    finally:
        holder.kill()
        holder.wait()
    text = _status(run)
    assert "no process holds the run" in text and f"pid {holder.pid}" in text and "killed or crashed" in text, text
    with runs.RunLock(run, "run") as lock:  # the dead holder's lock is taken over
        assert lock.owned and lock.taken_over.get("pid") == holder.pid
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from lvmlib.core.runs import RunLock; print(RunLock(sys.argv[1], 'child').owned)",
                str(run),
            ],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
        )
        assert child.stdout.strip() == "False", child.stderr  # started by the holder: shares it, no refusal
    assert json.loads((run / ".run.lock").read_text() or "{}") == {}


def _status(run: Path) -> str:
    from lvmlib.train.status import status

    return status(run)


def test_stale_temp_files_in_the_embedding_cache_are_removed_at_open(tmp_path):
    """SIGKILL skips atomic_path's cleanup; the next open removes temp files of dead writers (and any
    older than a day), never one a live writer is still filling."""
    cache = encoder.EmbeddingCache(tmp_path, "fake-encoder", 16)
    cache.set_dim(4)
    dig = encoder.text_digests(_TEXTS[:8])
    cache.add(dig, _vector_of(dig))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    old = time.time() - 3600
    stale = cache.dir / f".shard-{time.time_ns():x}-{dead_pid}-abcdef.vec.npy.x1y2z3.tmp"
    ancient = cache.dir / ".meta.json.q1w2e3.tmp"
    live = cache.dir / f".shard-{time.time_ns():x}-{os.getpid()}-fedcba.vec.npy.a1b2c3.tmp"
    for p in (stale, ancient, live):
        p.write_bytes(b"half a shard")
    os.utime(stale, (old, old))
    os.utime(ancient, (time.time() - 2 * 86400,) * 2)
    os.utime(live, (old, old))
    reopened = encoder.EmbeddingCache(tmp_path, "fake-encoder", 16)
    assert not stale.exists() and not ancient.exists() and live.exists()
    assert reopened.removed_tmp == 2 and len(reopened) == 8


def test_a_huge_paragraph_is_cut_into_bounded_pieces_and_counted(tmp_path, monkeypatch):
    """A 300 KB paragraph (pysbd alone: ~108 s, growing with its square) reaches the sentence splitter
    only in pieces of at most MAX_PARAGRAPH_CHARS, is counted in the data summary's counts (also when
    replayed from the chunk cache) and named in the data report's summary; progress is reported."""
    from lvmlib.data import corpus
    from lvmlib.plots import data as plots_data

    sent = "The old river flows past the castle and the market of the town every single day."
    huge = " ".join([sent] * 3700)  # ~ 300 KB, one paragraph
    path = tmp_path / "c.jsonl"
    with open(path, "w") as fh:
        fh.write(json.dumps({"title": "huge", "paragraphs": [huge]}) + "\n")
        fh.write(json.dumps({"title": "small", "text": sent * 3}) + "\n")
    corpus.split_sentences("warm up the segmenter.")
    seg, seen = corpus._SEGMENTER, []
    real = seg.segment
    monkeypatch.setattr(seg, "segment", lambda text: (seen.append(len(text)), real(text))[1])
    cfg = load_config(
        None,
        [
            "data.source=jsonl",
            f"data.path={path}",
            "data.min_words=5",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.chunk_workers=1",
        ],
    ).data  # the splitter watched here is this process's
    ticks = []
    for attempt in range(2):  # chunked, then replayed from the chunk cache
        stage = tmp_path / f"stage{attempt}"
        stage.mkdir()
        staged = data._stage_text(cfg, stage, progress=False)
        assert staged.counts["paragraphs_cut"] == 1 and staged.counts["paragraphs_cut_chars"] == len(huge)
        assert int(staged.n_chunks[0]) == 3700
    assert max(seen) <= corpus.MAX_PARAGRAPH_CHARS and sum(seen) >= len(huge) - 3700
    st = corpus.ChunkStats(on_piece=lambda done, total: ticks.append((done, total)))
    corpus.split_sentences(huge, st)
    assert ticks[-1][0] == ticks[-1][1] > 50
    fake = {
        "counts": {
            "articles": 2,
            "chunks": 3701,
            "windows": 1,
            "articles_short": 0,
            "duplicates_removed": 0,
            "paragraphs_cut": 1,
            "paragraphs_cut_chars": len(huge),
            "per_split": {s: {"articles": 1, "windows": 1} for s in ("train", "val", "test")},
        },
        "context_len": 5,
        "encoder": "e",
        "d_vec": 4,
        "audit": {"passed": True, "articles_in_several_splits": 0, "shared_across_splits": 0, "payload_mismatches": 0},
        "trivial": {},
    }
    assert "1 over-long paragraph(s)" in plots_data.summary_markdown(fake)


def _start_run(tmp_path: Path, args: list, cache: Path, session: bool) -> subprocess.Popen:
    (tmp_path / "tmp").mkdir(exist_ok=True)  # the kernel's socket folder lands here: leaks are visible
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LVM_CACHE_DIR=str(cache), TMPDIR=str(tmp_path / "tmp")
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lvmlib",
            "run",
            *map(str, args),
            "--runs-root",
            str(tmp_path / "runs"),
            "--reports-root",
            str(tmp_path / "reports"),
            "--quiet",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=session,
    )


def _wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout  # a bound against hangs only, never an assertion on speed
    while not cond():
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


def _no_leaks(tmp_path: Path, run: Path) -> None:
    assert not list((tmp_path / "tmp").glob("lvm-kernel-*")), "kernel socket folder leaked"
    assert not no_tmp_files(run), no_tmp_files(run)


@pytest.mark.slow
def test_ctrl_c_during_training_interrupts_the_kernel_at_once_and_the_run_resumes(tmp_path, lvm_cache):
    """Ctrl-C (SIGINT to the terminal's process group; the kernel has a session of its own) while 02_train
    runs 200 epochs: the cell is interrupted, not finished; the run is `interrupted`, last.pt is the last
    completed epoch, nothing leaked, `status` says no process holds it; --resume continues it."""
    over = tiny_overrides(vectors_npz(tmp_path / "c.npz")) + [
        "train.epochs=200",
        "train.decision_tree=false",
        "train.patience=1000",
    ]
    proc = _start_run(tmp_path, [SMOKE, *[a for o in over for a in ("--set", o)], "--run-id", "sig"], lvm_cache, True)
    run = tmp_path / "runs" / "sig"
    _wait_for(lambda: (run / "history.json").is_file(), proc, "a completed epoch")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert "INTERRUPTED: 02_train: interrupted by Ctrl-C (SIGINT)" in line and f"--resume {run}" in line, line
    history = json.loads((run / "history.json").read_text())
    assert 1 <= len(history) < 200, "training ran on after Ctrl-C"
    _, _, ck = load_checkpoint(run / "last.pt")
    assert ck["epoch"] == len(history)
    m = _manifest(run)
    assert m["status"] == "interrupted" and m["stages"]["02_train"]["status"] == "interrupted", m
    assert json.loads((run / "train_progress.json").read_text())["state"] == "interrupted"
    assert (tmp_path / "reports" / "sig" / "02_train.html").is_file()
    assert "<b>interrupted</b>" in (tmp_path / "reports" / "index.html").read_text()
    _no_leaks(tmp_path, run)
    assert "run status: interrupted" in _status(run)
    done = len(history)
    proc = _start_run(tmp_path, ["--resume", run, "--set", f"train.epochs={done + 1}"], lvm_cache, False)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert _manifest(run)["status"] == "succeeded"
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == list(range(1, done + 2))
    _no_leaks(tmp_path, run)


@pytest.mark.slow
def test_sigterm_during_the_data_stage_is_treated_like_ctrl_c(tmp_path, lvm_cache):
    """SIGTERM to the runner alone (what `timeout` or a batch scheduler sends) while 01_data splits a
    long corpus: the kernel is interrupted, the staging dir and the kernel's socket folder are removed,
    the run is `interrupted` with its 01_data report, and `status` tells it is not live."""
    sent = "The old river flows past the castle and the market of the town every single day."
    corpus = tmp_path / "big.jsonl"
    with open(corpus, "w") as fh:
        for a in range(160):  # ~80 s of sentence splitting: the signal lands inside it, even with a slow interrupt
            fh.write(
                json.dumps({"title": f"A{a}", "paragraphs": [f"{sent} Article {a}, part {i}." for i in range(400)]})
                + "\n"
            )
    proc = _start_run(
        tmp_path,
        [
            SMOKE,
            "--set",
            "data.source=jsonl",
            "--set",
            f"data.path={corpus}",
            "--set",
            "data.max_articles=0",
            "--run-id",
            "term",
        ],
        lvm_cache,
        False,
    )
    run = tmp_path / "runs" / "term"
    _wait_for(lambda: run.is_dir() and any(run.glob(".data-staging-*")), proc, "the data stage")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "INTERRUPTED: 01_data: interrupted by SIGTERM" in err.strip().splitlines()[-1], err[-2000:]
    m = _manifest(run)
    assert m["status"] == "interrupted" and m["stages"]["01_data"]["status"] == "interrupted", m
    assert not (run / "data" / "summary.json").exists()
    assert (tmp_path / "reports" / "term" / "01_data.html").is_file()
    _no_leaks(tmp_path, run)
    text = _status(run)
    assert "run status: interrupted" in text and "live:" not in text, text


@pytest.mark.slow
def test_a_copied_run_is_a_new_run_with_its_own_reports(tmp_path, tiny_run):
    """`cp -r runs/A runs/B; run --resume runs/B --only 03_gates`: reports/B is written, reports/A and
    A's record stay as they were, and B's manifest says where it was copied from."""
    a = copy_run(tiny_run, tmp_path)
    runner.record_run(tmp_path / "reports", a)
    before = snapshot(tmp_path / "reports" / a.name)
    b = tmp_path / "runs" / "copy"
    import shutil

    shutil.copytree(a, b)
    run_study("", resume=b, only=["03_gates"], reports_root=tmp_path / "reports", progress=False)
    assert snapshot(tmp_path / "reports" / a.name) == before
    rec = json.loads((tmp_path / "reports" / "copy" / "run.json").read_text())
    assert rec["run_id"] == "copy" and rec["status"] == "succeeded" and rec["run_dir"] == str(b)
    m = _manifest(b)
    assert m["run_id"] == "copy" and m["copied_from"] == a.name
    assert _manifest(a)["run_id"] == a.name
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "copy/index.html" in index and f"{a.name}/index.html" in index


@pytest.mark.slow
def test_eval_runs_its_kernel_like_run_and_takes_any_path(tmp_path, tiny_run, monkeypatch):
    """`eval RUN --data '/dir with #hash/x.npz'`: the path reaches the evaluation whole (passed as data,
    not YAML text), through the runner's kernel launcher (IPC sockets, Ctrl-C handling)."""
    run = copy_run(tiny_run, tmp_path)
    odd = tmp_path / "with #hash: and 'quotes'"
    odd.mkdir()
    export_run(run, out=odd / "x.npz")
    calls = []
    real = execute.execute_notebook
    monkeypatch.setattr(execute, "execute_notebook", lambda *a, **kw: (calls.append(a), real(*a, **kw))[1])
    cli("eval", run, "--data", odd / "x.npz", "--reports-root", tmp_path / "reports")
    assert len(calls) == 1
    ev = json.loads((run / "eval_x" / "eval.json").read_text())
    assert str(odd / "x.npz") in json.dumps(ev), "the path was cut"
    assert (tmp_path / "reports" / run.name / "eval_x.html").is_file()
