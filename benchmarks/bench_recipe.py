"""Time to an answer: an epoch and a whole training of the old headline recipe vs the new one, same run, same data.

    .venv/bin/python benchmarks/bench_recipe.py RUN_DIR                     # RUN_DIR: the headline's prepared data
    .venv/bin/python benchmarks/bench_recipe.py RUN_DIR --windows 8192 --rounds 2

Both recipes are `--params` (default params/wiki1000_x800_fast.yaml, the new one) plus their `--old-set` / `--new-set` overrides.
Each row trains one epoch on a seeded --windows subset of RUN_DIR's train windows (the loss still sees the
whole train bank, as in a real run) in a fresh temporary run directory whose data/ links RUN_DIR's; rows
alternate old, new, old, new, so load on this shared machine hits both alike. An epoch is extrapolated from
the row's seq/s to every train window, plus one validation (timed in the row); a recipe's training is its
epochs x that. Prints the table and the median ratios old / new (>= 4x is issue 26's target).
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
OLD = ["loss.bank_sample=0", "train.epochs=5"]  # the headline of 2026-12-06 (round 5): exact bank, 5 epochs
NEW: list[str] = []  # the params file as committed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--params", default=str(ROOT / "params" / "wiki1000_x800_fast.yaml"))
    ap.add_argument("--old-set", nargs="*", default=OLD, metavar="KEY=VALUE")
    ap.add_argument("--new-set", nargs="*", default=NEW, metavar="KEY=VALUE")
    ap.add_argument("--windows", type=int, default=8192, help="train windows timed per row")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from lvmlib.core.config import load_config
    from lvmlib.core.errors import DataError
    from lvmlib.data.prepare import load_prepared
    from lvmlib.train.loop import last_epoch, train

    try:
        prep = load_prepared(args.run_dir)  # DataError names the missing file
    except DataError as e:
        sys.exit(str(e))
    data, n_train = prep.dir.resolve(), len(prep.windows("train")[1])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, sets in (("old", args.old_set), ("new", args.new_set)):
                run = Path(tmp) / f"{name}-{r}"
                run.mkdir()
                os.symlink(data, run / "data")
                cfg = load_config(args.params, [*sets, "train.epochs=1", f"train.max_train_windows={args.windows}"])
                epochs = last_epoch(load_config(args.params, list(sets)).train)  # the epochs it trains
                train(cfg, run, progress=False)
                h = json.loads((run / "history.json").read_text())[-1]
                epoch_s = n_train / h["seq_per_s"] + h["val_seconds"]
                rows.append(dict(round=r + 1, recipe=name, seq_per_s=h["seq_per_s"], epoch_s=epoch_s, epochs=epochs))
                print(f"  {name} round {r + 1}: {h['seq_per_s']:.0f} seq/s, epoch ~{epoch_s / 60:.1f} min", flush=True)
    print(f"\n## old vs new recipe on {data.parent.name} ({n_train:,} train windows), {args.params}")
    print(f"old: {' '.join(args.old_set) or '(as committed)'}; new: {' '.join(args.new_set) or '(as committed)'}")
    print("| round | recipe | seq/s | epoch (min) | epochs | training (min) |\n|---|---|---|---|---|---|")
    for x in rows:
        print(
            f"| {x['round']} | {x['recipe']} | {x['seq_per_s']:.0f} | {x['epoch_s'] / 60:.1f} | {x['epochs']} "
            f"| {x['epoch_s'] * x['epochs'] / 60:.1f} |"
        )
    old, new = rows[0::2], rows[1::2]
    per_epoch = statistics.median(a["epoch_s"] / b["epoch_s"] for a, b in zip(old, new))
    whole = statistics.median(a["epoch_s"] * a["epochs"] / (b["epoch_s"] * b["epochs"]) for a, b in zip(old, new))
    print(f"\nold / new, median of {len(old)} round(s): an epoch {per_epoch:.2f}x, the whole training {whole:.2f}x")


if __name__ == "__main__":
    main()
