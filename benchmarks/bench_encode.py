"""Encoder backends against torch (plain `SentenceTransformer.encode`), same texts, same thread count, one run.

    .venv/bin/python benchmarks/bench_encode.py            # 2,000 chunks + copy_last R@5 on the whole default corpus
    .venv/bin/python benchmarks/bench_encode.py --quick    # 400 chunks + R@5 on its first 40 articles (< 3 min warm)

Each backend runs in its own process (its peak RSS is its own): load (and export, the first time; the
export is cached under <cache root>/models/), one warm-up batch, then the timed encode of the same
length-sorted texts. torch runs first and last; its mean is the baseline of every ratio. Quality: mean
and min cosine of each backend's vectors to torch's, and for the fastest backend whose mean cosine passes
(>= 0.99) the copy_last R@5 (primary bank: every chunk, the query's context removed) on the test split
of the default corpus prepared with that backend vs with torch (`lvmlib.data.baselines.copy_last_retrieval`).
The last line names the best backend: the fastest one that passes both bars (cosine >= 0.99, R@5 within
0.5 points of torch's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
COS_BAR, R5_BAR = 0.99, 0.5

from bench_data import table  # noqa: E402  (the benchmarks' one markdown-table printer)

from lvmlib.core.config import ENCODER_BACKENDS as BACKENDS  # noqa: E402


def sample_texts(n: int) -> list[str]:
    """n chunk texts of the default corpus, every 4th chunk (several articles, every length)."""
    from lvmlib.core.config import DataConfig
    from lvmlib.data import corpus, encoder

    texts: list[str] = []
    for _, chunks in corpus.iter_chunked_cached(DataConfig(), encoder.cache_root()):
        texts += chunks
        if len(texts) >= 4 * n:
            break
    return texts[::4][:n]


def worker(backend: str, texts_path: str, out_path: str) -> None:
    """One backend in this process: setup, warm-up, timed encode; vectors to out_path, a JSON line to stdout."""
    import numpy as np
    import torch

    from lvmlib.data import encoder

    texts = json.loads(Path(texts_path).read_text())
    t0 = time.perf_counter()
    enc = encoder.Encoder(encoder.BUNDLED_ENCODER, 256, batch_size=64, backend=backend)
    enc.encode(texts[:64])  # load (+ export the first time) + warm up
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    vec = enc.encode(texts)
    sec = time.perf_counter() - t0
    np.save(out_path, vec)
    print(
        json.dumps(
            {
                "backend": enc.backend_id,
                "seconds": sec,
                "setup_s": setup,
                "threads": torch.get_num_threads(),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def run_worker(backend: str, texts_path: Path, out: Path) -> dict:
    r = subprocess.run(
        [sys.executable, __file__, "--worker", backend, str(texts_path), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        return {"backend": backend, "error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def copy_last_r5(backend: str, max_articles: int, tmp: Path) -> tuple[float, int]:
    """copy_last R@5 (primary bank) on the test split of the default corpus embedded with `backend`."""
    from lvmlib.core.config import load_config
    from lvmlib.data import prepare as data

    over = [f"data.encoder_backend={backend}"] + ([f"data.max_articles={max_articles}"] if max_articles else [])
    run = tmp / f"prep-{backend}"
    data.prepare_data(load_config(None, over), run, progress=False)
    r = data.copy_last_retrieval(data.load_prepared(run), "test", max_queries=10**9)
    return 100 * r["recall_at_5_excl_context"], int(r["n_queries"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="400 chunks, R@5 on the first 40 articles")
    ap.add_argument("--n", type=int, default=0, help="chunks to time (default 2000, --quick 400)")
    ap.add_argument("--backends", default=",".join(BACKENDS[1:]), help="backends to compare with torch")
    ap.add_argument("--worker", nargs=3, metavar=("BACKEND", "TEXTS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker)
    import numpy as np
    import torch

    n = args.n or (400 if args.quick else 2000)
    texts = sample_texts(n)
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        (tmp / "texts.json").write_text(json.dumps(texts))
        order = ["torch", *[b for b in args.backends.split(",") if b and b != "torch"], "torch"]
        res, vecs = [], {}
        for i, b in enumerate(order):
            rec = run_worker(b, tmp / "texts.json", tmp / f"v{i}.npy")
            rec["name"] = b
            if "error" not in rec:
                vecs[i] = np.load(tmp / f"v{i}.npy")
            res.append((i, rec))
        torch_s = [r["seconds"] for i, r in res if r["name"] == "torch" and "error" not in r]
        base = float(np.mean(torch_s))
        ref = vecs[0]
        rows, summary = [], {}
        for i, r in res:
            if "error" in r:
                rows.append([r["name"], "–", "–", "–", "–", "–", "–", f"failed: {r['error']}"])
                continue
            cos = (vecs[i] * ref).sum(1)  # unit vectors: dot = cosine
            ratio = base / r["seconds"]
            if r["name"] != "torch":
                summary[r["name"]] = {"ratio": ratio, "cos_mean": float(cos.mean()), "id": r["backend"]}
            rows.append(
                [
                    r["name"] + (" (baseline)" if r["name"] == "torch" else ""),
                    r["backend"],
                    f"{n / r['seconds']:.1f}",
                    f"{ratio:.2f}x",
                    f"{r['peak_rss_mb']:.0f}",
                    f"{cos.mean():.5f}",
                    f"{cos.min():.5f}",
                    f"setup {r['setup_s']:.1f} s",
                ]
            )
        table(
            f"Encoder backends — all-MiniLM-L6-v2, {n} default-corpus chunks, batch 64, "
            f"{res[0][1].get('threads', torch.get_num_threads())} threads, one process each "
            f"(torch first and last: {', '.join(f'{n / s:.1f}' for s in torch_s)} chunks/s)",
            ["backend", "resolved", "chunks/s", "vs torch", "peak RSS MB", "cos to torch (mean)", "min", "note"],
            rows,
        )
        passing = sorted(
            (b for b, s in summary.items() if s["cos_mean"] >= COS_BAR), key=lambda b: -summary[b]["ratio"]
        )
        if not passing:
            print("\nbest backend: torch 1.00x torch, cosine to torch 1.0000 (no other backend passes cosine >= 0.99)")
            return
        arts = 40 if args.quick else 0
        best = None
        r5_rows = []
        t_r5, q = copy_last_r5("torch", arts, tmp)
        r5_rows.append(["torch", f"{t_r5:.2f}%", "–", q])
        for b in passing:  # fastest first; stop at the first that also passes the R@5 bar
            r5, q = copy_last_r5(b, arts, tmp)
            ok = abs(r5 - t_r5) <= R5_BAR
            r5_rows.append([b, f"{r5:.2f}%", f"{r5 - t_r5:+.2f} pts" + ("" if ok else " (fails)"), q])
            if ok:
                best = b
                break
        table(
            "copy_last R@5, primary bank, test split of the default corpus"
            + (" (first 40 articles)" if arts else "")
            + ", vectors of each backend",
            ["backend", "R@5", "vs torch", "queries"],
            r5_rows,
        )
        if best is None:
            print("\nbest backend: torch 1.00x torch, cosine to torch 1.0000 (no backend passes the R@5 bar)")
        else:
            s = summary[best]
            print(f"\nbest backend: {best} {s['ratio']:.2f}x torch, cosine to torch {s['cos_mean']:.4f}")


if __name__ == "__main__":
    main()
