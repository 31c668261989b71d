"""The corpora travel with the project: counts and checksums as corpora/README.md says, nothing read from outside."""

import gzip
import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT / "corpora"


def _table() -> dict[str, dict[str, str]]:
    """corpora/README.md's table: file -> {articles, paragraphs, words, sha256}."""
    rows = {}
    for line in (CORPORA / "README.md").read_text().splitlines():
        m = re.match(
            r"\| `([\w.]+\.jsonl\.gz)` \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| .* \| `([0-9a-f]{64})` \|$", line
        )
        if m:
            rows[m[1]] = {"articles": m[2], "paragraphs": m[3], "words": m[4], "sha256": m[5]}
    return rows


def test_readme_lists_every_corpus_file():
    assert sorted(_table()) == sorted(p.name for p in CORPORA.glob("*.jsonl.gz"))
    assert len(_table()) == 3


@pytest.mark.parametrize("name", ["wiki_dev_1000.jsonl.gz", "wiki_extra_3000.jsonl.gz", "wiki_distract_2000.jsonl.gz"])
def test_checksum_and_counts_match_the_readme(name):
    row = _table()[name]
    path = CORPORA / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"], f"{name}: not the file the README names"
    n = paragraphs = words = 0
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            art = json.loads(line)
            n += 1
            paragraphs += len(art["paragraphs"])
            words += sum(len(p.split()) for p in art["paragraphs"])
    assert (f"{n:,}", f"{paragraphs:,}", f"{words:,}") == (row["articles"], row["paragraphs"], row["words"])


def test_every_params_file_reads_corpora_inside_the_repository():
    for params in sorted((ROOT / "params").glob("*.yaml")):
        raw = yaml.safe_load(params.read_text()) or {}
        if "study" in raw:  # a study file: its runs' corpora, as --set overrides
            sets = [o for p in raw["predictors"] for o in p.get("set", [])] + raw.get("common", [])
            data = {
                k[5:]: v for k, v in (o.split("=", 1) for o in sets) if k.startswith("data.") and k.endswith("path")
            }
        else:
            data = raw.get("data") or {}
        for key in ("path", "extra_train_path", "test_path", "distractor_path"):
            if data.get(key):
                path = (ROOT / data[key]).resolve()
                assert path.is_file(), f"{params.name}: data.{key} = {data[key]} is not a file of the repository"
                assert ROOT in path.parents, f"{params.name}: data.{key} = {data[key]} is outside the repository"


def test_nothing_tracked_reads_the_development_machines_shared_folder():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    needle = "../" + "shared"  # spelled in two pieces so this file does not match itself
    offenders = []
    for rel in files:
        path = ROOT / rel
        if path.suffix in (".gz", ".png", ".pt", ".npy", ".npz") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{rel}:{i}" for i, line in enumerate(text.splitlines(), 1) if needle in line]
        if rel.endswith(".py") and '"shared" / ' + '"corpora"' in text:
            offenders.append(f"{rel}: builds a path to the shared corpora folder")
    assert offenders == [], f"read the corpora from corpora/, not from outside the repository: {offenders}"
