"""Shared builders of the bad-input and crash-safety tables (and conftest's `tiny_run`): a tiny `vectors`
corpus, a run built in-process with the calls the notebooks make, the CLI in-process or as a
subprocess, and a snapshot of a directory tree to prove nothing was half-written."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from lvmlib.app.cli import main
from lvmlib.core.config import dump_config, load_config
from lvmlib.core.runs import atomic_write_text, create_run_dir, now_iso, start_manifest, write_manifest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "params" / "smoke.yaml"
D = 32  # vector width of the tiny `vectors` corpus (smoke's d_model is 32 too)


# --------------------------------------------------------------------------- shared builders
def vectors_npz(path: Path, n_articles: int = 40, n_chunks: int = 12, d: int = D, seed: int = 0, **replace) -> Path:
    """A `vectors` source: one random walk on the unit sphere per article (the next vector is
    predictable from the context, so a tiny model trains). `replace` swaps or drops (None) arrays."""
    rng = np.random.default_rng(seed)
    vecs = []
    for _ in range(n_articles):
        v = rng.normal(size=d)
        for _ in range(n_chunks):
            vecs.append(v / np.linalg.norm(v))
            v = v + 0.5 * rng.normal(size=d) / np.sqrt(d)
    arrays = {
        "vectors": np.asarray(vecs, np.float32),  # (M, D)
        "article_ids": np.repeat(np.arange(n_articles), n_chunks),  # (M)
        "positions": np.tile(np.arange(n_chunks), n_articles),
    }  # (M)
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def tiny_overrides(npz: Path) -> list[str]:
    """On top of params/smoke.yaml: the tiny vectors corpus instead of Wikipedia, one epoch."""
    return [
        "data.source=vectors",
        f"data.path={npz}",
        "data.max_articles=0",
        "train.epochs=1",
        "eval.bootstrap=20",
        "eval.latency_queries=5",
        "eval.n_examples=1",
    ]


def make_tiny_run(runs_root: Path, npz: Path, run_id: str = "base") -> Path:
    """A run whose 01_data and 02_train succeeded, built in-process with the calls the notebooks make
    (prepare_data, train) and a manifest, so `python -m lvmlib run --resume` accepts it. ~5 s."""
    from lvmlib.data.prepare import prepare_data
    from lvmlib.train.loop import train

    over = tiny_overrides(npz)
    cfg = load_config(SMOKE, over)
    run = create_run_dir(runs_root, run_id)
    atomic_write_text(run / "params.yaml", dump_config(cfg))
    start_manifest(run, run_id, str(SMOKE), over, cfg.train.seed, cfg.name)
    prepare_data(cfg, run, progress=False)
    train(cfg, run, progress=False)
    write_manifest(
        run,
        status="succeeded",
        ended_at=now_iso(),
        stages={n: {"status": "succeeded", "seconds": 0.0} for n in ("01_data", "02_train")},
    )
    return run


class CliFailed(Exception):
    """`python -m lvmlib` exited non-zero; the message is its last stderr line (the one-line reason)."""

    def __init__(self, code: int, stderr: str):
        lines = stderr.strip().splitlines()
        super().__init__(lines[-1] if lines else f"exit status {code} and no message")
        self.code, self.stderr = code, stderr


def cli(*args: str) -> None:
    """`python -m lvmlib ARGS` in-process (fast: no interpreter start); raise CliFailed unless it exits 0."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in args])
    if code:
        raise CliFailed(code, err.getvalue())


def cli_subprocess(tmp: Path, *args: str, cache: Path) -> None:
    """`python -m lvmlib run ARGS` as a user types it (papermill, kernels), runs/ and reports/ in `tmp`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LVM_CACHE_DIR=str(cache))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lvmlib",
            "run",
            *map(str, args),
            "--runs-root",
            str(tmp / "runs"),
            "--reports-root",
            str(tmp / "reports"),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if r.returncode:
        raise CliFailed(r.returncode, r.stderr)


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> content hash (files) or 'dir', for everything under root, hidden files included."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
    return out


def copy_run(src: Path, tmp: Path) -> Path:
    dst = tmp / "runs" / src.name
    shutil.copytree(src, dst)
    return dst
