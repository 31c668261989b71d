"""Exact search throughput: faiss-cpu IndexFlatIP vs torch matmul + top-k, banks of 10K..1M vectors.

    python benchmarks/bench_search.py                       # 10K, 100K, 1M x 384, 256 queries, k = 55
    python benchmarks/bench_search.py --sizes 10000,100000  # smaller

Columns: `batch` = `metrics.exact_search` over all queries at once (bank scanned in `--chunk`-row
blocks, the evaluation's shape); `ranks` = `metrics.target_ranks` (the exact counting pass that gives
the metrics: one matmul pass, every bank at once); `batch-1` = one query at a time against a whole-bank
index built beforehand (the latency shape of `eval.latency.measure_latency`, 1 thread). Ratios are
torch / faiss time (> 1: faiss faster). Memory: the bank (M x D float32; 1.5 GB at 1M x 384) plus,
for batch-1 only, one whole-bank index (faiss) or tensor (torch) beside it.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lvmlib import metrics as mt


def random_bank(M: int, D: int, seed: int = 0, block: int = 65536) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bank = np.empty((M, D), np.float32)
    for s in range(0, M, block):
        bank[s : s + block] = mt.l2_normalize(rng.standard_normal((min(block, M - s), D), dtype=np.float32))
    return bank


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def batch1(bank: np.ndarray, queries: np.ndarray, k: int, backend: str) -> float:
    """Median seconds per single query against a whole-bank index (1 thread)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if backend == "faiss":
            import faiss

            old_f = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            index = faiss.IndexFlatIP(bank.shape[1])
            index.add(bank)
            fn = lambda q: index.search(q, k)
        else:
            bt = torch.from_numpy(bank)
            fn = lambda q: torch.topk(torch.from_numpy(q) @ bt.T, k, dim=1)
        times = []
        for i in range(-2, len(queries)):
            q = queries[max(i, 0) : max(i, 0) + 1]
            t0 = time.perf_counter()
            fn(q)
            if i >= 0:
                times.append(time.perf_counter() - t0)
        if backend == "faiss":
            faiss.omp_set_num_threads(old_f)
            del index
        return float(np.median(times))
    finally:
        torch.set_num_threads(old)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--batch1-queries", type=int, default=20)
    ap.add_argument("--k", type=int, default=55, help="50 + K, as the evaluation asks for")
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    if not mt.faiss_available():
        print("faiss is not installed: only the torch backend can run; nothing to compare")
        return 1
    import faiss

    print(
        f"# exact search, D={args.dim}, {args.queries} queries, k={args.k}, chunk={args.chunk}; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)"
    )
    print(
        "| bank M | faiss batch s | torch batch s | ratio | faiss q/s | torch q/s | ranks s (torch) "
        "| faiss batch-1 ms | torch batch-1 ms | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(1)
    for M in (int(x) for x in args.sizes.split(",")):
        bank = random_bank(M, args.dim)
        q = mt.l2_normalize(rng.standard_normal((args.queries, args.dim), dtype=np.float32))
        out = {}
        for be in ("faiss", "torch"):
            out[be] = timed(lambda: mt.exact_search(q, bank, args.k, backend=be, chunk=args.chunk), args.repeat)
        s_f, i_f = mt.exact_search(q, bank, args.k, backend="faiss", chunk=args.chunk)
        s_t, i_t = mt.exact_search(q, bank, args.k, backend="torch", chunk=args.chunk)
        agree = float((i_f == i_t).mean())
        tgt = np.asarray(i_f[:, 10])  # some bank rows as "targets"
        t_rank = timed(lambda: mt.target_ranks(q, bank, tgt, chunk=args.chunk), 1)
        b1 = {be: batch1(bank, q[: args.batch1_queries], args.k, be) for be in ("faiss", "torch")}
        print(
            f"| {M:,} | {out['faiss']:.3f} | {out['torch']:.3f} | {out['torch'] / out['faiss']:.2f} | "
            f"{args.queries / out['faiss']:,.0f} | {args.queries / out['torch']:,.0f} | {t_rank:.3f} | "
            f"{1e3 * b1['faiss']:.2f} | {1e3 * b1['torch']:.2f} | {b1['torch'] / b1['faiss']:.2f} |"
            + ("" if agree == 1.0 else f" (lists agree {agree:.4%})"),
            flush=True,
        )
        bank = None  # free it before the next size
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
