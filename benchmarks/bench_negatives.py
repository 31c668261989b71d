"""Training speed of `loss.negatives: batch` vs `bank` on one prepared run, same process, interleaved.

    .venv/bin/python benchmarks/bench_negatives.py RUN_DIR [--windows 3072] [--rounds 2] [--params params/default.yaml]

RUN_DIR is any run whose data stage finished (its data/ is linked, not copied). Each row trains one
epoch on the first --windows train windows (validation on 100 queries) in a fresh temporary run
directory; rounds alternate batch, bank, batch, bank so machine load hits both alike. Prints seq/s per
row and the median ratio bank / batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--windows", type=int, default=3072)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--params", default=str(ROOT / "params" / "default.yaml"))
    args = ap.parse_args()
    from lvmlib.core.config import load_config
    from lvmlib.core.errors import DataError
    from lvmlib.data.prepare import load_prepared
    from lvmlib.train.loop import train

    try:
        data = load_prepared(args.run_dir).dir.resolve()  # DataError names the missing file
    except DataError as e:
        sys.exit(str(e))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for neg in ("batch", "bank"):
                run = Path(tmp) / f"{neg}-{r}"
                run.mkdir()
                os.symlink(data, run / "data")
                cfg = load_config(
                    args.params,
                    [
                        f"loss.negatives={neg}",
                        "train.epochs=1",
                        f"train.max_train_windows={args.windows}",
                        "train.val_max_queries=100",
                    ],
                )
                train(cfg, run, progress=False)
                h = json.loads((run / "history.json").read_text())[-1]
                rows.append((r, neg, h["seq_per_s"], h["train_seconds"]))
    print(f"\n## loss.negatives on {data.parent.name}: {args.windows} train windows, 1 epoch, {args.params}")
    print("| round | negatives | seq/s | train s |\n|---|---|---|---|")
    for r, neg, sps, sec in rows:
        print(f"| {r + 1} | {neg} | {sps:.1f} | {sec:.1f} |")
    ratios = [b[2] / a[2] for a, b in zip(rows[0::2], rows[1::2])]
    print(f"\nbank / batch seq/s, median of {len(ratios)} round(s): {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
