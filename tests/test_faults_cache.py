"""Faults the kit heals (issue 29): a damaged embedding-cache shard is moved aside and encoded again; a
damaged last.pt falls back on last.prev.pt. Unit tests first, then the real CLI on the smoke params (slow)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lvmlib.app.cli import main
from lvmlib.core.errors import CheckpointError
from lvmlib.data import encoder
from lvmlib.model import checkpoint as ck

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [f"chunk number {i}" for i in range(60)]


def _vector_of(dig: np.ndarray) -> np.ndarray:
    """(n, 2) digests -> (n, 4): a vector that is a function of the text, so any mix-up shows."""
    return np.repeat((dig[:, :1] % 1000).astype(np.float32), 4, axis=1)


def _filled(root: Path, shards: int = 3) -> tuple[encoder.EmbeddingCache, list[Path]]:
    """A cache of TEXTS in `shards` shards; -> (cache, keys files in the order written)."""
    cache = encoder.EmbeddingCache(root, "fake-encoder", 16)
    cache.set_dim(4)
    per = len(TEXTS) // shards
    for s in range(shards):
        dig = encoder.text_digests(TEXTS[s * per : (s + 1) * per])
        cache.add(dig, _vector_of(dig))
    keys = sorted(cache.dir.glob("shard-*.keys.npy"), key=lambda p: p.name)
    return cache, keys


def _files(keys: Path) -> list[Path]:
    return [keys, *encoder._shard_files(keys)]


def _truncate(path: Path, keep: int = 100) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(keep)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _untimed(history: list[dict]) -> list[dict]:
    from lvmlib.train.loop import TIMING_KEYS

    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def _snapshot(d: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """relative path -> sha256 of every file under d (except those whose path or first part is in `skip`)."""
    rel = {p: p.relative_to(d) for p in sorted(d.rglob("*")) if p.is_file()}
    return {
        str(r): hashlib.sha256(p.read_bytes()).hexdigest()
        for p, r in rel.items()
        if r.parts[0] not in skip and str(r) not in skip
    }


# --------------------------------------------------------------------------- the shard digest
def test_a_shard_carries_the_digest_of_both_files_written_before_its_keys(tmp_path, monkeypatch):
    cache, keys = _filled(tmp_path, shards=1)
    vec, dig = encoder._shard_files(keys[0])
    want = json.loads(dig.read_text())
    for part, p in (("vec", vec), ("keys", keys[0])):
        assert want[part] == {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
    order = []
    real = encoder.atomic_write_bytes
    monkeypatch.setattr(encoder, "atomic_write_bytes", lambda p, b: (order.append(Path(p).name), real(p, b)))
    real_json = encoder.atomic_write_json
    monkeypatch.setattr(encoder, "atomic_write_json", lambda p, o: (order.append(Path(p).name), real_json(p, o)))
    cache.add(encoder.text_digests(["x y z"]), np.ones((1, 4), np.float32))
    assert [n.split(".", 1)[1] for n in order] == ["vec.npy", "sha256.json", "keys.npy"]  # keys commit the shard


# --------------------------------------------------------------------------- quarantine at open
DAMAGE = {
    "vec-truncated": lambda k: _truncate(encoder._shard_files(k)[0]),
    "vec-truncated-to-nothing": lambda k: _truncate(encoder._shard_files(k)[0], 0),
    "keys-truncated": lambda k: _truncate(k, 20),
    "keys-bit-flip": _flip_last_byte,
    "vec-missing": lambda k: encoder._shard_files(k)[0].unlink(),
    "digest-garbage": lambda k: encoder._shard_files(k)[1].write_text("{not json"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_shard_is_moved_aside_at_open_with_one_warning(tmp_path, capsys, damage):
    _, keys = _filled(tmp_path)
    bad = keys[1]
    DAMAGE[damage](bad)
    capsys.readouterr()
    cache = encoder.EmbeddingCache(tmp_path, "fake-encoder", 16)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("[lvm-study] warning: embedding cache shard ")
    assert bad.name in out[0] and "encoded again" in out[0] and "quarantine" in out[0]
    q = cache.dir / encoder.QUARANTINE
    assert not any(p.exists() for p in _files(bad)), "the bad shard is still in the cache"
    assert (q / bad.name).is_file()
    found = cache.lookup(encoder.text_digests(TEXTS))
    assert (found[20:40] < 0).all() and (found[:20] >= 0).all() and (found[40:] >= 0).all()
    got = np.empty((40, 4), np.float32)
    hits = np.r_[0:20, 40:60]
    cache.gather(found[hits], got)
    np.testing.assert_array_equal(got, _vector_of(encoder.text_digests([TEXTS[i] for i in hits])))


def test_a_bit_flip_in_the_vectors_is_caught_before_they_are_used(tmp_path, capsys):
    _, keys = _filled(tmp_path)
    _flip_last_byte(encoder._shard_files(keys[2])[0])  # same size: the cheap check at open passes
    cache = encoder.EmbeddingCache(tmp_path, "fake-encoder", 16)
    assert len(cache) == 60
    dig = encoder.text_digests(TEXTS)
    assert cache.verify_vectors(cache.lookup(dig)) == 1
    assert "does not match its sha256" in capsys.readouterr().out
    assert (cache.lookup(dig)[40:] < 0).all() and len(cache) == 40


def test_a_shard_written_before_digests_is_accepted_and_checked_by_loading(tmp_path, capsys):
    cache, keys = _filled(tmp_path)
    for k in keys:
        encoder._shard_files(k)[1].unlink()  # as the kit wrote shards before digests
    assert encoder.shard_problem(keys[0]) is None and len(encoder.EmbeddingCache(tmp_path, "fake-encoder", 16)) == 60
    _truncate(encoder._shard_files(keys[0])[0], 150)
    cache = encoder.EmbeddingCache(tmp_path, "fake-encoder", 16)
    assert len(cache) == 40 and keys[0].name in capsys.readouterr().out


def test_embed_bank_encodes_the_chunks_of_a_bad_shard_again_and_gives_the_same_bank(tmp_path, monkeypatch):
    from lvmlib.core.config import load_config

    class FakeEncoder:  # counts what it encodes; vectors are a function of the text
        seen: list[str] = []

        def __init__(self, *a, **k):
            self.cache_id, self.dim, self.backend_id = "fake-encoder", 4, "torch"

        def encode(self, texts, bar=None):
            FakeEncoder.seen += texts
            return _vector_of(encoder.text_digests(texts))

    monkeypatch.setattr(encoder, "Encoder", FakeEncoder)
    cfg = load_config(ROOT / "params" / "smoke.yaml", [f"data.cache_dir={tmp_path / 'cache'}"]).data
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps(t) + "\n" for t in TEXTS))
    dig = encoder.text_digests(TEXTS)
    monkeypatch.setattr(encoder, "FLUSH_EVERY", 25)  # three shards: 25 + 25 + 10
    first = encoder.embed_bank(cfg, dig, texts, tmp_path / "a.npy", np.float32, progress=False)
    assert first["encoded"] == 60
    shards = sorted((tmp_path / "cache" / "embeddings").glob("*/shard-*.keys.npy"))
    bad = next(k for k in shards if len(np.load(k)) == 25)
    _truncate(encoder._shard_files(bad)[0])
    FakeEncoder.seen = []
    again = encoder.embed_bank(cfg, dig, texts, tmp_path / "b.npy", np.float32, progress=False)
    assert again["encoded"] == 25 and again["cache_hits"] == 35 and again["cache_shards_moved_aside"] == 1
    assert sorted(FakeEncoder.seen) == sorted(
        TEXTS[i] for i in np.flatnonzero(np.isin(dig[:, 0], np.load(bad.parent / "quarantine" / bad.name)[:, 0]))
    )
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    assert encoder.verify_cache(tmp_path / "cache")["bad"] == []


# --------------------------------------------------------------------------- two processes, one bad shard
def _open_at_once(args):
    root, barrier = args
    barrier.wait()
    c = encoder.EmbeddingCache(root, "fake-encoder", 16)
    return len(c), len(c.quarantined)


def test_two_processes_that_find_the_same_bad_shard_both_go_on(tmp_path):
    _, keys = _filled(tmp_path)
    _truncate(encoder._shard_files(keys[0])[0])
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(4)
        with ctx.Pool(4) as pool:
            results = pool.map(_open_at_once, [(tmp_path, barrier)] * 4)
    assert [n for n, _ in results] == [40] * 4
    assert sum(q for _, q in results) == 1, "exactly one process moved the keys file (and warned)"
    q = keys[0].parent / encoder.QUARANTINE
    assert sorted(p.name for p in q.iterdir()) == sorted(p.name for p in _files(keys[0]))


def test_quarantining_a_shard_twice_is_harmless(tmp_path):
    _, keys = _filled(tmp_path)
    assert encoder.quarantine_shard(keys[0]) is True
    assert encoder.quarantine_shard(keys[0]) is False


@pytest.mark.parametrize("level", ["quiet", "normal", "verbose"])
def test_a_warning_from_a_notebook_reaches_the_terminal_at_every_level(level):
    import io

    from lvmlib.app.console import Console

    out = io.StringIO()
    con = Console(level, stream=out, live=False)
    con.stage_start("01_data")
    con.feed("chunking...\n[lvm-study] warning: embedding cache shard shard-x.keys.npy is bad (…)\nembedded\n")
    con.stage_end("01_data", "succeeded", 1.0)
    lines = out.getvalue().splitlines()
    assert lines.count("[lvm-study] warning: embedding cache shard shard-x.keys.npy is bad (…)") == 1
    assert ("embedded" in lines) == (level == "verbose")  # other kernel lines only in verbose


# --------------------------------------------------------------------------- cache verify / list
def test_cache_verify_reports_each_bad_shard_and_fix_moves_them_aside(tmp_path, capsys):
    _, keys = _filled(tmp_path)
    assert main(["cache", "verify", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [
        f"embedding cache {tmp_path}: 3 of 3 shard(s) good (60 vectors)"
    ]
    _truncate(encoder._shard_files(keys[0])[0])
    _flip_last_byte(encoder._shard_files(keys[2])[0])
    before = _snapshot(tmp_path)
    assert main(["cache", "verify", "--dir", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(": ")[0] for ln in lines[:2]] == ["bad shard"] * 2
    assert keys[0].name in lines[0] and "truncated" in lines[0] and keys[2].name in lines[1] and "sha256" in lines[1]
    assert lines[2].endswith("1 of 3 shard(s) good (20 vectors)") and len(lines) == 3
    assert _snapshot(tmp_path) == before, "verify without --fix changed the cache"
    out = main(["cache", "list", "--dir", str(tmp_path)]), capsys.readouterr().out
    assert out[0] == 0 and "40 vectors" in out[1]  # list does not trip on the torn shard (it is not checked in full)
    assert main(["cache", "verify", "--fix", "--dir", str(tmp_path)]) == 0
    assert "2 moved aside" in capsys.readouterr().out
    assert main(["cache", "verify", "--dir", str(tmp_path)]) == 0
    assert (keys[0].parent / "quarantine" / keys[0].name).is_file()


# --------------------------------------------------------------------------- checkpoints
def _model_and_cfg():
    from lvmlib.core.config import load_config
    from lvmlib.model.models import build_model

    cfg = load_config(ROOT / "params" / "smoke.yaml")
    return build_model(cfg.model, 8), cfg


RESUME_STATE = {"optimizer": {}, "scheduler": {}, "rng": [], "history": [], "train_state": {}}


def _save_last(run: Path, model, cfg, epoch: int) -> None:
    ck.save_checkpoint(run / "last.pt", model, cfg, 8, keep_previous=True, epoch=epoch, **RESUME_STATE)


def test_saving_last_keeps_the_previous_one_as_a_separate_file(tmp_path):
    model, cfg = _model_and_cfg()
    _save_last(tmp_path, model, cfg, 1)
    assert not (tmp_path / "last.prev.pt").exists()
    _save_last(tmp_path, model, cfg, 2)
    _save_last(tmp_path, model, cfg, 3)
    assert ck.read_checkpoint(tmp_path / "last.pt")["epoch"] == 3
    assert ck.read_checkpoint(tmp_path / "last.prev.pt")["epoch"] == 2
    assert not os.path.samefile(tmp_path / "last.pt", tmp_path / "last.prev.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]  # no temp file left


@pytest.mark.parametrize(
    "broken, best_resumable, want",
    [
        ((), False, "last.pt"),
        (("last.pt",), False, "last.prev.pt"),
        (("last.pt", "last.prev.pt"), True, "best.pt"),
        (("last.pt", "last.prev.pt"), False, None),
        (("last.pt", "missing:last.prev.pt"), False, None),
        (("missing:last.pt",), False, "last.prev.pt"),
    ],
)
def test_resume_falls_back_on_the_first_checkpoint_that_reads(tmp_path, broken, best_resumable, want):
    model, cfg = _model_and_cfg()
    _save_last(tmp_path, model, cfg, 1)
    _save_last(tmp_path, model, cfg, 2)
    extra = RESUME_STATE if best_resumable else {}
    ck.save_checkpoint(tmp_path / "best.pt", model, cfg, 8, epoch=1, **extra)
    for name in broken:
        if name.startswith("missing:"):
            (tmp_path / name.split(":")[1]).unlink()
        else:
            _truncate(tmp_path / name, 1000)
    if want is None:
        with pytest.raises(CheckpointError) as err:
            ck.resume_checkpoint(tmp_path)
        line = str(err.value)
        assert "\n" not in line and "no checkpoint to resume from" in line
        assert "last.pt: not a readable checkpoint (truncated or corrupted?); last.prev.pt: " in line
        assert "best.pt: lacks the resume state (optimizer" in line and "remove" in line and "new run" in line
        return
    src, passed = ck.resume_checkpoint(tmp_path)
    assert src == tmp_path / want
    assert [p.split(":")[0] for p in passed] == [n.removeprefix("missing:") for n in broken]


def test_a_run_without_checkpoints_starts_fresh(tmp_path):
    assert ck.resume_checkpoint(tmp_path) == (None, [])


def test_training_resumes_from_last_prev_when_last_is_truncated_and_the_manifest_says_so(tmp_path, capsys):
    from test_train import make_run_dir, strip_timing

    import lvmlib.train.loop as T
    from lvmlib.core.config import load_config
    from lvmlib.core.runs import read_json, write_manifest

    run = make_run_dir(tmp_path / "run", overrides=("train.epochs=3",))
    write_manifest(run, run_id="run", status="running")
    cfg = load_config(run / "params.yaml")
    ref = T.train(cfg, run, progress=False)
    assert ck.read_checkpoint(run / "last.prev.pt")["epoch"] == 2
    _truncate(run / "last.pt", 1000)
    capsys.readouterr()
    again = T.train(cfg, run, resume=True, progress=False)
    out = capsys.readouterr().out
    assert "[lvm-study] warning: last.pt unreadable (truncated?): resuming from last.prev.pt (epoch 2)" in out
    assert strip_timing(again) == strip_timing(ref)
    m = read_json(run / "manifest.json")
    assert m["resumed_from"]["checkpoint"] == "last.prev.pt" and m["resumed_from"]["epoch"] == 2
    assert m["events"][0]["event"] == "checkpoint_fallback" and "last.pt" in m["events"][0]["passed_over"][0]
    assert ck.read_checkpoint(run / "last.pt")["epoch"] == 3  # healed: a whole last.pt again


# --------------------------------------------------------------------------- end to end (the real CLI)
def _cli(args: list[str], cache: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LVM_CACHE_DIR=str(cache))
    return subprocess.run(
        [sys.executable, "-m", "lvmlib", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _run(tmp: Path, run_id: str, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli(
        ["run", "params/smoke.yaml", "--set", "train.epochs=2", "--run-id", run_id, "--runs-root", str(tmp / "runs")]
        + ["--reports-root", str(tmp / "reports"), "--quiet", *extra],
        cache,
    )


@pytest.fixture(scope="module")
def faults_smoke(tmp_path_factory):
    """Two smoke runs (2 epochs) started at once on one fresh cache -> (tmp, cache, [their results])."""
    tmp = tmp_path_factory.mktemp("faults")
    cache = tmp / "cache"
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LVM_CACHE_DIR=str(cache))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lvmlib", "run", "params/smoke.yaml", "--set", "train.epochs=2"]
            + ["--run-id", rid, "--runs-root", str(tmp / "runs"), "--reports-root", str(tmp / "reports"), "--quiet"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rid in ("a", "b")
    ]
    outs = [(p.wait(timeout=1200), p.stdout.read()) for p in procs]
    return tmp, cache, outs


@pytest.mark.slow
def test_two_runs_on_one_fresh_cache_at_once_both_succeed(faults_smoke):
    tmp, cache, outs = faults_smoke
    assert [rc for rc, _ in outs] == [0, 0], "\n".join(o[-2000:] for _, o in outs)
    assert not [o for _, o in outs if "warning" in o], "a run found a shard the other was writing bad"
    a, b = (np.load(tmp / "runs" / r / "data" / "bank_vectors.npy") for r in ("a", "b"))
    np.testing.assert_array_equal(a, b)
    assert _cli(["cache", "verify"], cache).returncode == 0


@pytest.mark.slow
def test_a_truncated_cache_shard_is_moved_aside_and_the_next_run_heals_the_cache(faults_smoke):
    tmp, cache, outs = faults_smoke
    assert [rc for rc, _ in outs] == [0, 0]
    shards = sorted(cache.glob("embeddings/*/shard-*.keys.npy"))
    bad = shards[0]
    _truncate(encoder._shard_files(bad)[0])
    before = _snapshot(tmp / "runs" / "a")
    v = _cli(["cache", "verify"], cache)
    assert v.returncode == 1 and bad.name in v.stdout and "Traceback" not in v.stdout + v.stderr
    r = _run(tmp, "healed", cache, "--set", "train.epochs=1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    warned = [ln for ln in (r.stdout + r.stderr).splitlines() if "warning" in ln]
    assert len(warned) == 1 and bad.name in warned[0] and "encoded again" in warned[0], r.stdout + r.stderr
    assert "EOF" not in r.stdout + r.stderr
    assert _cli(["cache", "verify"], cache).returncode == 0, "the cache did not heal"
    assert (bad.parent / "quarantine" / bad.name).is_file()
    assert _snapshot(tmp / "runs" / "a") == before, "another run's files changed"
    np.testing.assert_array_equal(
        np.load(tmp / "runs" / "healed" / "data" / "bank_vectors.npy"),
        np.load(tmp / "runs" / "a" / "data" / "bank_vectors.npy"),
    )


@pytest.mark.slow
def test_a_truncated_last_pt_resumes_from_last_prev_and_the_manifest_records_it(faults_smoke):
    tmp, cache, outs = faults_smoke
    assert [rc for rc, _ in outs] == [0, 0]
    run = tmp / "runs" / "b"
    hist = json.loads((run / "history.json").read_text())
    assert ck.read_checkpoint(run / "last.prev.pt")["epoch"] == 1
    _truncate(run / "last.pt", 4096)
    # what the resume rewrites: training's files, the run's records and the re-rendered 02_train notebook
    rewritten = ("last.pt", "last.prev.pt", "best.pt", "history.json", "train.log", "train_progress.json")
    rewritten += ("metrics/train.json", "manifest.json", "notebooks", ".run.lock", ".manifest.lock")
    before = _snapshot(run, skip=rewritten)
    r = _cli(["run", "--resume", str(run), "--reports-root", str(tmp / "reports"), "--quiet"], cache)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    warned = [ln for ln in (r.stdout + r.stderr).splitlines() if "warning" in ln]
    assert warned == ["[lvm-study] warning: last.pt unreadable (truncated?): resuming from last.prev.pt (epoch 1)"]
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "succeeded" and m["resumed_from"]["checkpoint"] == "last.prev.pt"
    assert m["events"][-1]["event"] == "checkpoint_fallback"
    assert _untimed(json.loads((run / "history.json").read_text())) == _untimed(hist)
    assert ck.read_checkpoint(run / "last.pt")["epoch"] == 2
    assert _snapshot(run, skip=rewritten) == before, "a file the resume should not touch changed"
