"""Reads of the confirmatory test set, one ledger: who read it, under which protocol, how often (issue 27).

A prepared run whose test split is a reserved article range (`data.test_path` over `config.RESERVED_ARTICLES`)
holds the confirmatory set. Its evaluation must name the protocol it follows (`eval.protocol`: a file
committed to git, e.g. docs/confirmatory.md) and the study it belongs to (`eval.study`): every run of one study
(its predictors, its seeds) is one read. `record_read` appends each evaluation to the ledger (default
`docs/confirmatory_reads.jsonl`, one JSON object per line, commit it with the results) and refuses a read by a
second study under the same protocol text (same sha256) unless forced; the count of studies that read under
it goes into eval.json and the report. Changing the protocol after a read does not reset the count: the
ledger keeps every digest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from lvmlib.core.errors import ProtocolError

LEDGER = Path("docs/confirmatory_reads.jsonl")


def protocol_digest(path: str | Path) -> str:
    """sha256 of the protocol file's bytes; ProtocolError naming it when it is missing."""
    p = Path(path)
    if not p.is_file():
        raise ProtocolError(f"{p}: protocol file not found (eval.protocol); write and commit it before the read")
    return hashlib.sha256(p.read_bytes()).hexdigest()


def committed(path: str | Path) -> str | None:
    """The git commit that holds `path` exactly as it is on disk, or None (untracked, changed, or no git)."""
    p = Path(path).resolve()
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=p.parent, capture_output=True, text=True, timeout=30)
        if run("ls-files", "--error-unmatch", p.name).returncode != 0:
            return None
        if run("diff", "--quiet", "HEAD", "--", p.name).returncode != 0:
            return None
        head = run("log", "-1", "--format=%H", "--", p.name)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() or None


def read_ledger(ledger: str | Path = LEDGER) -> list[dict[str, Any]]:
    """Every recorded read, oldest first ([] when the ledger does not exist); a bad line is a ProtocolError."""
    p = Path(ledger)
    if not p.is_file():
        return []
    out = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise ProtocolError(f"{p}:{i}: not a JSON line; the ledger of confirmatory reads is damaged") from None
    return out


def record_read(
    protocol: str | Path,
    study: str,
    run_dir: str | Path,
    test_set: dict[str, Any],
    force: bool = False,
    ledger: str | Path = LEDGER,
    require_commit: bool = True,
) -> dict[str, Any]:
    """Check that this evaluation may read the confirmatory set and append it to the ledger.

    -> {"protocol", "sha256", "commit", "study", "studies_under_protocol": distinct studies that have read
    under this protocol text, this one included, "forced"}. ProtocolError when `protocol` is missing or (with
    require_commit) not committed as it is, when `study` is empty, or when another study already read under
    the same protocol text and `force` is off."""
    if not study:
        raise ProtocolError("eval.study is empty: name the study this read belongs to (all its runs share it)")
    digest = protocol_digest(protocol)
    commit = committed(protocol)
    if require_commit and commit is None:
        raise ProtocolError(
            f"{protocol}: not committed as it is on disk; commit the protocol before any run reads the confirmatory set"
        )
    before = [r for r in read_ledger(ledger) if r.get("sha256") == digest]
    others = sorted({r["study"] for r in before if r.get("study") != study})
    if others and not force:
        first = next(r for r in before if r.get("study") in others)
        raise ProtocolError(
            f"the confirmatory set was already read under {protocol} (sha256 {digest[:12]}) by study "
            f"{first['study']!r} on {first['time']}; a second read needs eval.force_read=true and is counted"
        )
    entry = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "protocol": str(protocol),
        "sha256": digest,
        "commit": commit,
        "study": study,
        "run": str(run_dir),
        "test_set": test_set,
        "forced": bool(others),
    }
    p = Path(ledger)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
    return {
        "protocol": str(protocol),
        "sha256": digest,
        "commit": commit,
        "study": study,
        "studies_under_protocol": len({*others, study}),
        "forced": bool(others),
    }
