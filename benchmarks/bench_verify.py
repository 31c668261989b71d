"""What content digests cost on a run the headline run's size: recording them, a stage's check, `verify`.

    .venv/bin/python benchmarks/bench_verify.py [--rounds 3] [--rows 187698] [--queries 10775]

Builds a run directory in a temp dir from random data with the headline run's file sizes (bank 187,698 x 384
float32, keys, split, ~60 MB of texts, ~120K windows of K=5, best.pt / last.pt ~20 MB each, eval.json,
queries.csv), written with the kit's atomic writers (so their digests are recorded as a run records them).
Then times, median of `--rounds`, with the in-process digest memo cleared before each round:
recording every file's digest (`core.runs.record_file`: stream sha256 + manifest update under its lock), the
data stage's reader check (`check_files` on data/*), and `verify_run` (every file). The baseline, measured in
the same process: one exact top-10 search of the test queries over the bank (`lvmlib.metrics.exact_search`),
the core of the eval stage. Files are in the page cache (just written), as when a stage reads what the one
before wrote; a cold disk adds its read time to hashing and loading alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_run(run: Path, rows: int, dim: int, n_queries: int) -> list[Path]:
    """A run dir with the headline run's file sizes; returns every artefact written."""
    import numpy as np
    import torch

    from lvmlib.core.runs import (
        atomic_path,
        atomic_save_npy,
        atomic_save_npz,
        atomic_write_json,
        atomic_write_text,
        write_manifest,
    )

    rng = np.random.default_rng(0)
    write_manifest(run, run_id=run.name, status="running")
    bank = rng.standard_normal((rows, dim), dtype=np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    d = run / "data"
    atomic_save_npy(d / "bank_vectors.npy", bank)  # (M, D)
    atomic_save_npy(d / "bank_keys.npy", np.stack([np.arange(rows) // 20, np.arange(rows) % 20], 1))  # (M, 2)
    atomic_save_npy(d / "bank_split.npy", rng.integers(0, 3, rows).astype(np.int8))  # (M,)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", np.uint8)
    text = letters[rng.integers(0, len(letters), rows * 318)].tobytes().decode()
    atomic_write_text(d / "bank_texts.jsonl", "".join(f'"{text[i * 318 : (i + 1) * 318]}"\n' for i in range(rows)))
    atomic_write_json(d / "articles.json", [{"article_id": a, "n_chunks": 20} for a in range(rows // 20)])
    n_win = 120_000
    atomic_save_npz(
        d / "windows.npz",
        context_idx=rng.integers(0, rows, (n_win, 5)),  # (N, K)
        target_idx=rng.integers(0, rows, n_win),  # (N,)
        split=rng.integers(0, 3, n_win).astype(np.int8),  # (N,)
    )
    atomic_write_json(d / "summary.json", {"counts": {"chunks": rows}})
    for name in ("best.pt", "last.pt"):
        with atomic_path(run / name) as tmp:
            torch.save({"model": {"w": torch.randn(5_000_000)}}, tmp)  # ~20 MB
    atomic_write_json(run / "history.json", [{"epoch": e, "val_cosine": 0.5} for e in range(20)])
    atomic_write_json(run / "gates.json", {"passed": True})
    atomic_write_json(run / "metrics" / "eval.json", {"recall_at_5": 0.3, "n_queries": n_queries})
    ranks = rng.integers(1, rows, (n_queries * 4, 3))
    atomic_write_text(
        run / "metrics" / "queries.csv",
        "model,article_id,position,rank_global\n"
        + "".join(f"m{i % 4},{a},{b},{c}\n" for i, (a, b, c) in enumerate(ranks)),
    )
    return sorted(p for p in run.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != "manifest.json")


def timed(fn, rounds: int, before=lambda: None) -> float:
    out = []
    for _ in range(rounds):
        before()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=187_698, help="bank rows (the headline run's bank)")
    ap.add_argument("--queries", type=int, default=10_775, help="test queries (the headline run's test windows)")
    args = ap.parse_args()
    import numpy as np
    import torch

    from lvmlib.core import digests
    from lvmlib.core.runs import check_files, record_file, verify_run
    from lvmlib.metrics import exact_search

    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        run = Path(tmp) / "bench"
        run.mkdir()
        files = build_run(run, args.rows, 384, args.queries)
        size = sum(p.stat().st_size for p in files)
        assert len(json.loads((run / "manifest.json").read_text())["files"]) == len(files)
        bank = np.load(run / "data" / "bank_vectors.npy", mmap_mode="r")  # (M, D)
        queries = np.asarray(bank[np.random.default_rng(1).choice(len(bank), args.queries, replace=False)])  # (n, D)
        data = [p for p in files if p.parent.name == "data"]
        data_size = sum(p.stat().st_size for p in data)
        forget = digests._SEEN.clear  # each round hashes, as a fresh stage process does
        rows = [
            ("exact top-10 search (baseline)", timed(lambda: exact_search(queries, bank, 10), args.rounds)),
            ("record all digests", timed(lambda: [record_file(p) for p in files], args.rounds, forget)),
            ("check data/* (a stage's load)", timed(lambda: check_files(data), args.rounds, forget)),
            ("verify (every file)", timed(lambda: verify_run(run), args.rounds, forget)),
        ]
        assert verify_run(run)["bad"] == {}
    base = rows[0][1]
    print(
        f"run dir: {len(files)} files, {size / 1e6:.0f} MB (bank {args.rows:,} x 384 float32); "
        f"{args.queries:,} queries; torch threads {torch.get_num_threads()}; median of {args.rounds}"
    )
    print(f"| {'step':<32} | {'seconds':>8} | {'vs search':>9} | {'MB/s':>6} |")
    print(f"|{'-' * 34}|{'-' * 9}:|{'-' * 10}:|{'-' * 7}:|")
    hashed = [None, size, data_size, size]  # bytes each step hashes
    for (name, sec), nbytes in zip(rows, hashed):
        rate = f"{nbytes / 1e6 / sec:6.0f}" if nbytes else "     —"
        print(f"| {name:<32} | {sec:8.3f} | {100 * sec / base:7.2f} % | {rate} |")


if __name__ == "__main__":
    main()
