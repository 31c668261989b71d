"""Data-stage benchmarks: embedding throughput, warm-cache re-run of 01_data, the data stage at corpus
scale, ingestion memory.

    .venv/bin/python benchmarks/bench_data.py            # everything (needs a warm default cache for "warm")
    .venv/bin/python benchmarks/bench_data.py --only scale [--backend auto]   # ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_data.py --only chunking                 # ~1 min

Prints one table per part, each with a baseline measured in the same run:
- chunking: the default corpus chunked cold with one sentence-splitting process per core vs one;
- embed: MiniLM chunks/s, length-sorted batches (what lvmlib.data.prepare does) vs batches in corpus order;
- warm: prepare_data on the default corpus with a warm embedding cache, and 01_data.ipynb via papermill;
- scale: prepare_data on the dev corpus (1,000 articles, ~105K chunks) with the real encoder and
  `data.encoder_backend` (default: the kit's `auto`), cold (an empty cache: chunking, the ONNX export,
  every chunk encoded) then warm (the same cache) in fresh processes: seconds of each step
  (summary.json `seconds`: corpus read + sentence split + chunk, split + dedup, windows, embedding,
  audit, statistics), peak RSS and peak anonymous memory;
- memory: peak RSS of prepare_data on the dev corpus (corpora/wiki_dev_1000.jsonl.gz) at
  growing sizes, float32 vs float16 store, each in a fresh process. The encoder there is a hash-based
  stand-in (384-D), so the numbers are the pipeline's own memory; the model adds a constant (see table).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "corpora" / "wiki_dev_1000.jsonl.gz"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n## {title}")
    w = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print("| " + " | ".join(str(h).ljust(n) for h, n in zip(header, w)) + " |")
    print("|" + "|".join("-" * (n + 2) for n in w) + "|")
    for r in rows:
        print("| " + " | ".join(str(x).ljust(n) for x, n in zip(r, w)) + " |")


def bench_chunking() -> None:
    """Cold chunking of the default corpus (read + clean + sentence split + group, no cache) with
    `data.chunk_workers` = one per core vs 1, same process, same chunks."""

    from lvmlib.core.config import DataConfig
    from lvmlib.data import corpus

    rows, out = [], {}
    for w in (corpus.chunk_workers(DataConfig()), 1):
        cfg = DataConfig(chunk_workers=w)
        t0 = time.perf_counter()
        out[w] = list(corpus.iter_chunked(cfg))
        rows.append([w, sum(len(c) for _, c in out[w]), f"{time.perf_counter() - t0:.1f}"])
    same = out[rows[0][0]] == out[1]
    rows[0].append(f"{float(rows[1][2]) / float(rows[0][2]):.2f}x")
    rows[1].append("1.00x (baseline)")
    table(
        f"Chunking the default corpus cold ({len(out[1])} articles; same chunks: {same})",
        ["chunk_workers", "chunks", "seconds", "vs 1 worker"],
        rows,
    )


def bench_embed(n: int = 1024) -> None:
    import numpy as np
    import torch

    from lvmlib.core.config import DataConfig
    from lvmlib.data import corpus, encoder

    texts = []
    for _, chunks in corpus.iter_chunked_cached(DataConfig(), encoder.cache_root()):
        texts += chunks
        if len(texts) >= 4 * n:
            break
    texts = texts[::4][:n]  # spread over several articles
    enc = encoder.Encoder(encoder.BUNDLED_ENCODER, 256, batch_size=64)
    enc.encode(texts[:64])  # load + warm up
    model = enc.model()
    t0 = time.perf_counter()
    for s in range(0, n, 64):  # baseline: batches in corpus order
        model.encode(texts[s : s + 64], batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc.encode(texts)
    t_sorted = time.perf_counter() - t0
    words = float(np.mean([len(t.split()) for t in texts]))
    table(
        f"Embedding throughput — all-MiniLM-L6-v2, CPU, {torch.get_num_threads()} threads, {n} default-corpus "
        f"chunks (mean {words:.1f} words), batch 64",
        ["batches", "seconds", "chunks/s", "ratio"],
        [
            ["corpus order (baseline)", f"{t_plain:.1f}", f"{n / t_plain:.1f}", "1.00"],
            [
                "length-sorted (lvmlib.data.prepare)",
                f"{t_sorted:.1f}",
                f"{n / t_sorted:.1f}",
                f"{t_plain / t_sorted:.2f}",
            ],
        ],
    )


def bench_warm() -> None:
    from lvmlib.core.config import load_config
    from lvmlib.data import prepare as data

    cfg = load_config(None, [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = data.prepare_data(cfg, Path(tmp) / "run", progress=False)
        t_prep = time.perf_counter() - t0
        enc = s["embedding"]["encoded"]
        rows.append(["prepare_data (default corpus)", f"{t_prep:.1f}", s["counts"]["chunks"], enc])
        run = Path(tmp) / "nb"
        (run / "data").mkdir(parents=True)
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "papermill",
                str(ROOT / "notebooks" / "01_data.ipynb"),
                str(Path(tmp) / "out.ipynb"),
                "-k",
                "lvm-study",
                "-p",
                "run_dir",
                str(run),
                "-p",
                "params_path",
                str(ROOT / "params" / "default.yaml"),
                "--no-progress-bar",
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        t_nb = time.perf_counter() - t0
        rows.append(["01_data.ipynb via papermill (kernel start incl.)", f"{t_nb:.1f}", s["counts"]["chunks"], 0])
    table("01_data with a warm embedding cache (target <= 30 s)", ["what", "seconds", "chunks", "encoded now"], rows)


CHILD = r"""
import hashlib, json, resource, sys, time
import numpy as np
from lvmlib.data import prepare as data
from lvmlib.data import encoder
from lvmlib.core.config import load_config

class HashST:  # 384-D stand-in for the encoder: the pipeline's memory, not the model's
    max_seq_length = 0
    def get_embedding_dimension(self): return 384
    def encode(self, texts, **kw):
        out = np.empty((len(texts), 384), np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
            out[i] = np.random.default_rng(seed).standard_normal(384)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

if sys.argv[3] == "hash":
    encoder.load_encoder = lambda name: HashST()
cfg = load_config(None, json.loads(sys.argv[1]))
t0 = time.perf_counter()
s = data.prepare_data(cfg, sys.argv[2], progress=False)
print(json.dumps({"chunks": s["counts"]["chunks"], "windows": s["counts"]["windows"],
                  "encoded": s["embedding"]["encoded"], "seconds": time.perf_counter() - t0,
                  "steps": s["seconds"], "backend": s["embedding"].get("encoder_backend"),
                  "peak_rss_mb": peak_rss_mb(), "peak_anon_mb": peak_anon_mb()}))
"""
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork+exec, so a child would report its parent's peak.
# RssAnon (sampled every 20 ms) is the part that is not file-backed: memory-mapped bank/cache/payload
# pages count in RSS but are clean page cache the kernel can drop, so anon is what must fit in RAM.
PEAK = r"""
import threading, time as _t
_anon = [0]
def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
def _sample():
    while True:
        _anon[0] = max(_anon[0], _status("RssAnon:"))
        _t.sleep(0.02)
threading.Thread(target=_sample, daemon=True).start()
def peak_rss_mb():
    return _status("VmHWM:")
def peak_anon_mb():
    return max(_anon[0], _status("RssAnon:"))
"""
CHILD = PEAK + CHILD


def _child(overrides: list[str], run_dir: Path, encoder: str) -> dict:
    if encoder == "hash":  # the stand-in replaces the torch model; the exported backends would not see it
        overrides = overrides + ["data.encoder_backend=torch"]
    r = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(overrides), str(run_dir), encoder],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_scale(backend: str) -> None:
    """Cold then warm prepare_data on the dev corpus with the real encoder, each in a fresh process."""
    if not DEV.is_file():
        print(f"\n## Data stage at corpus scale: skipped (dev corpus not found at {DEV})")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ov = ["data.source=jsonl", f"data.path={DEV}", f"data.cache_dir={tmp}/cache", f"data.encoder_backend={backend}"]
        for kind in ("cold", "warm"):
            res = _child(ov, Path(tmp) / f"run-{kind}", "real")
            steps = [k for k in res["steps"] if k != "total"]  # the data stage's own step names, in order
            rows.append(
                [
                    f"{kind} ({res['backend']})",
                    f"{res['seconds']:.0f}",
                    *(f"{res['steps'][k]:.1f}" for k in steps),
                    res["chunks"],
                    res["encoded"],
                    f"{res['peak_rss_mb']:.0f}",
                    f"{res['peak_anon_mb']:.0f}",
                ]
            )
    table(
        f"Data stage on the dev corpus ({DEV.name}), data.encoder_backend={backend}, "
        f"{os.cpu_count()} cores; cold = empty cache, warm = the same cache again (seconds per step)",
        ["run", "total s", *steps, "chunks", "encoded", "peak RSS MB", "peak anon MB"],
        rows,
    )


def bench_memory(sizes: list[int]) -> None:
    if not DEV.is_file():
        print(f"\n## Ingestion memory: skipped (dev corpus not found at {DEV})")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = ["data.source=jsonl", f"data.path={DEV}", f"data.cache_dir={tmp}/cache"]
        # baseline: the interpreter with lvmlib.data.prepare imported and nothing ingested
        r = subprocess.run(
            [sys.executable, "-c", PEAK + "import lvmlib.data.prepare, torch\nprint(peak_rss_mb(), peak_anon_mb())"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        floor, floor_anon = map(float, r.stdout.split())
        rows.append(["imports only (baseline)", "-", "-", "-", "-", f"{floor:.0f}", f"{floor_anon:.0f}", "-"])
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                PEAK + "from lvmlib import data\n"
                "encoder.Encoder(encoder.BUNDLED_ENCODER, 256).encode(['a few words here'] * 64)\n"
                "print(peak_rss_mb(), peak_anon_mb())",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        enc_rss, enc_anon = map(float, r.stdout.strip().splitlines()[-1].split())
        rows.append(
            [
                "MiniLM loaded, one batch encoded (constant)",
                "-",
                "-",
                "-",
                "-",
                f"{enc_rss:.0f}",
                f"{enc_anon:.0f}",
                "-",
            ]
        )
        for n in sizes:
            for f16 in (False, True):
                ov = base + [f"data.max_articles={n}", f"data.store_float16={str(f16).lower()}"]
                res = _child(ov, Path(tmp) / f"run-{n}-{f16}", "hash")
                rows.append(
                    [
                        n,
                        "float16" if f16 else "float32",
                        res["chunks"],
                        res["encoded"],
                        f"{res['seconds']:.0f}",
                        f"{res['peak_rss_mb']:.0f}",
                        f"{res['peak_anon_mb']:.0f}",
                        f"{(res['peak_anon_mb'] - floor_anon) * 1024 / res['chunks']:.1f}",
                    ]
                )
    table(
        "Ingestion of the dev corpus (1,000 articles), hash encoder (384-D), fresh process per row; the "
        "float32 row of each size chunks and encodes cold, the float16 row reuses both caches",
        [
            "articles",
            "bank dtype",
            "chunks",
            "encoded",
            "seconds",
            "peak RSS MB",
            "peak anon MB",
            "anon KB/chunk over baseline",
        ],
        rows,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="chunking,embed,warm,scale,memory")
    ap.add_argument("--backend", default="auto", help="data.encoder_backend of the scale part (default: auto)")
    ap.add_argument("--sizes", default="125,250,500,1000")
    args = ap.parse_args()
    parts = args.only.split(",")
    if "chunking" in parts:
        bench_chunking()
    if "embed" in parts:
        bench_embed()
    if "warm" in parts:
        bench_warm()
    if "scale" in parts:
        bench_scale(args.backend)
    if "memory" in parts:
        bench_memory([int(x) for x in args.sizes.split(",")])


if __name__ == "__main__":
    main()
