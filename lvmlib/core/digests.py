"""Content digests of a run's files: streamed sha256, which run a file belongs to, judging a file by its record.

A run records `manifest["files"][relpath] = {"sha256", "size", "at"}` for every artefact it writes
(`lvmlib.core.runs` does the recording and the checking under the manifest's lock; this module holds
the pieces that need no manifest). A file judged once in a process is remembered by its inode, size and
mtime, so a stage that loads the same file several times hashes it once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

CHUNK = 1 << 22  # 4 MiB reads: hashing streams, a bank of any size never sits in memory
MANIFEST = "manifest.json"
# not recorded: the record itself; a live progress file rewritten every few seconds while training;
# the config, validated by its schema on every read and written before the manifest exists
SKIP = frozenset({MANIFEST, "train_progress.json", "params.yaml"})
MAX_DEPTH = 3  # artefacts sit at most this many folders below the run dir (data/x, eval_name/x, ...)
_SEEN: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime_ns) -> sha256 judged in this process


def file_digest(path: str | Path) -> dict[str, Any]:
    """{"sha256", "size"} of a file, read in 4 MiB pieces."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            size += n
    return {"sha256": h.hexdigest(), "size": size}


def _stat_key(path: Path) -> tuple[str, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)


def remember(path: str | Path, sha256: str) -> None:
    """Note that `path` as it is now has this digest (just written, or just hashed)."""
    key = _stat_key(Path(path))
    if key is not None:
        _SEEN[key] = sha256


def find_run(path: str | Path) -> tuple[Path, str] | None:
    """(run dir, posix relpath) when `path` lies inside a run dir (the nearest folder above it, at most
    MAX_DEPTH up, holding manifest.json) and is an artefact a run records; None otherwise (a file outside
    any run, the manifest itself, a file in a hidden folder such as the data stage's staging dir)."""
    path = Path(path)
    if path.name in SKIP and (path.parent / MANIFEST).is_file():
        return None
    parent = path.parent.resolve()
    parts = [path.name]
    for _ in range(MAX_DEPTH):
        if (parent / MANIFEST).is_file():
            if any(p.startswith(".") for p in parts):
                return None
            rel = "/".join(reversed(parts))
            return (parent, rel) if rel not in SKIP else None
        parts.append(parent.name)
        if parent.parent == parent:
            return None
        parent = parent.parent
    return None


def judge(path: Path, rec: dict[str, Any]) -> str | None:
    """None when `path` matches its record, else what is wrong: 'missing' or 'changed (...)'."""
    key = _stat_key(path)
    if key is None:
        return "missing"
    want = str(rec.get("sha256", ""))
    if _SEEN.get(key) == want:
        return None
    if key[2] != rec.get("size"):
        return f"changed (size {key[2]:,} bytes, recorded {rec.get('size', '?'):,})"
    got = file_digest(path)["sha256"]
    _SEEN[key] = got
    if got == want:
        return None
    return f"changed (sha256 {got[:12]}… recorded {want[:12]}…, size {key[2]:,} bytes as recorded)"


def hint(rel: str, run_dir: Path) -> str:
    """What to do about a changed file: re-run the stage that writes it, or restore it."""
    stages = {
        "data/": "01_data",
        "gates.json": "03_gates",
        "metrics/eval.json": "04_eval",
        "metrics/queries": "04_eval",
    }
    stage = next((st for prefix, st in stages.items() if rel.startswith(prefix)), None)
    if stage:
        return f"re-run the stage that writes it: python -m lvmlib run --resume {run_dir} --only {stage}"
    return f"restore it from a copy, or re-run the study into a new run (python -m lvmlib run {run_dir}/params.yaml)"


def human_size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.0f} {unit}" if n >= 10 * scale else f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
