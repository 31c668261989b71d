"""The bank InfoNCE's forward + backward on a run's real train bank, with and without zeroing the
near-zero entries (`lvmlib.train.losses.BankNegatives`, `TINY`), same process, interleaved rounds.

    .venv/bin/python benchmarks/bench_bank_loss.py RUN_DIR [--batch 128] [--rounds 3] [--threads 0]

all-MiniLM-L6-v2 leaves two of its 384 dimensions at ~1e-38 in every vector. Times a softmax gradient
(down to ~1e-11) those are subnormal floats, and the backward's matmul (grad (B, M) @ bank (M, D)) runs
on them in a slow path. Prints seconds per micro-batch (forward + backward, and the backward matmul
alone) for both banks, the median ratio, and the largest loss difference between them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    import numpy as np
    import torch
    import torch.nn.functional as F

    from lvmlib.core.errors import DataError
    from lvmlib.data.prepare import load_prepared
    from lvmlib.metrics import duplicate_groups
    from lvmlib.train.losses import TINY, BankNegatives, bank_info_nce

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        prep = load_prepared(args.run_dir)  # DataError names the missing file of an unfinished data stage
    except DataError as e:
        sys.exit(str(e))
    ctx, tgt = prep.windows("train")
    neg = BankNegatives(prep.bank_vectors, np.union1d(ctx.ravel(), tgt), duplicate_groups(prep.bank_vectors))
    raw = F.normalize(
        torch.from_numpy(np.asarray(prep.bank_vectors[np.union1d(ctx.ravel(), tgt)], dtype=np.float32)), dim=-1
    )
    tiny = int(((raw.abs() < TINY) & (raw != 0)).sum())
    print(
        f"{args.run_dir}: train bank {raw.shape[0]:,} x {raw.shape[1]}; {tiny:,} entries in (0, {TINY:g}) "
        f"({tiny / raw.shape[0]:.2f} per row), torch threads {torch.get_num_threads()}"
    )
    rng = np.random.default_rng(0)
    w = rng.choice(len(tgt), args.batch, replace=False)
    vec = np.asarray(prep.bank_vectors)
    target = torch.from_numpy(vec[tgt[w]].astype(np.float32))
    q0 = target + 0.5 * torch.from_numpy(vec[ctx[w, -1]].astype(np.float32))  # a plausible prediction
    ex = neg.exclusions(ctx[w], tgt[w])
    scale = 1 / 0.07

    def one(bank):
        q = q0.clone().requires_grad_()
        t0 = time.perf_counter()
        loss = bank_info_nce(q, target, bank, scale, ex)
        loss.backward()
        t1 = time.perf_counter()
        g = torch.softmax((F.normalize(q0, dim=-1) * scale) @ bank.T, dim=1) / args.batch  # the backward's left operand
        t2 = time.perf_counter()
        g @ bank
        return t1 - t0, time.perf_counter() - t2, float(loss.detach())

    one(neg.bank), one(raw)  # warm-up
    res = {"zeroed": [], "raw": []}
    for _ in range(args.rounds):
        res["raw"].append(one(raw))
        res["zeroed"].append(one(neg.bank))
    print("| bank | fwd + bwd s / micro-batch | backward matmul s | loss |")
    print("|---|---|---|---|")
    for name, rows in res.items():
        print(
            f"| {name} | {statistics.median(r[0] for r in rows):.3f} | {statistics.median(r[1] for r in rows):.3f} "
            f"| {rows[0][2]:.6f} |"
        )
    ratio = statistics.median(a[0] / b[0] for a, b in zip(res["raw"], res["zeroed"]))
    mm = statistics.median(a[1] / b[1] for a, b in zip(res["raw"], res["zeroed"]))
    diff = max(abs(a[2] - b[2]) for a, b in zip(res["raw"], res["zeroed"]))
    print(
        f"zeroing the near-zero entries: fwd + bwd {ratio:.2f}x faster, backward matmul {mm:.2f}x faster, "
        f"largest loss difference {diff:.2e}"
    )


if __name__ == "__main__":
    main()
