"""Pieces of the training recipe: the lr schedule, context augmentation, and the RNG state for exact resume.

Pieces of the training recipe, each tested alone: the learning-rate schedule, the context augmentation
(article dropout, span corruption) and the RNG state that makes a resumed training continue exactly.

Shapes: b windows, L context length (K), D vector width.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import torch

from lvmlib.core.config import DROPOUT_POSITIONS


def lr_factor(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier of optimizer step `step` (0-based): linear warmup to 1, then cosine to min_ratio."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def augment(
    ctx: np.ndarray, rng: np.random.Generator, article_dropout: float, span_corruption: float, positions: str = "last"
):
    """Training-batch augmentation of contexts (b, L, D) -> new array (the input is not modified).

    Span corruption (p each sample): one position j ~ U{0..L-1} takes position j of another sample.
    Article dropout (p each sample): k ~ U{1..L} positions are zeroed — the last k (`positions="last"`,
    the seed) or the first k (`"first"`, which keeps the most recent chunk).
    Returns (ctx_aug, info) with info = {"corrupted" (b) bool, "dropped" (b) bool, "drop_k" (b) int}.
    """
    if positions not in DROPOUT_POSITIONS:
        raise ValueError(f"augment: positions must be 'last' or 'first', got {positions!r}")
    b, L, _ = ctx.shape
    out = ctx.copy()  # (b, L, D)
    corrupted = rng.random(b) < span_corruption  # (b)
    if b < 2:
        corrupted[:] = False
    rows = np.flatnonzero(corrupted)
    pos = rng.integers(0, L, size=rows.size)
    other = (rows + rng.integers(1, max(b, 2), size=rows.size)) % b  # never the sample itself
    out[rows, pos] = ctx[other, pos]
    dropped = rng.random(b) < article_dropout  # (b)
    drop_k = np.where(dropped, rng.integers(1, L + 1, size=b), 0)  # (b)
    if positions == "last":
        zero = np.arange(L)[None, :] >= (L - drop_k)[:, None]  # (b, L)
    else:
        zero = np.arange(L)[None, :] < drop_k[:, None]  # (b, L)
    out[zero] = 0.0
    return out, {"corrupted": corrupted, "dropped": dropped, "drop_k": drop_k}


def rng_state(aug: np.random.Generator) -> dict:
    st = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": json.dumps([st[0], st[1].tolist(), *st[2:]]),
        "python": json.dumps(random.getstate()),
        "aug": json.dumps(aug.bit_generator.state),
    }


def set_rng_state(s: dict, aug: np.random.Generator) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    st = json.loads(s["numpy"])
    np.random.set_state((st[0], np.array(st[1], dtype=np.uint32), *st[2:]))
    py = json.loads(s["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    aug.bit_generator.state = json.loads(s["aug"])
