"""What the evaluation reads, and the checks that must hold before any number is computed.

`load_eval_data` takes a run dir (its `data/`), a data dir, or a seed-format payload `.npz` (the bank is
then rebuilt from the payload's keys). `check_alignment`, `check_windows` and `check_bank` raise
`SanityError` when keys, vectors or the bank disagree: the numbers would be meaningless.

Shapes: n queries, K context length, D vector width, M bank rows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from lvmlib.core.config import SPLITS
from lvmlib.core.errors import SanityError


# --------------------------------------------------------------------------- data
@dataclasses.dataclass
class EvalData:
    """What evaluation reads, from a prepared data dir or from a seed-format payload alone."""

    source: str
    bank_vectors: np.ndarray  # (M, D), may be a memmap
    bank_keys: np.ndarray  # (M, 2) article_id, position
    bank_split: np.ndarray  # (M,) 0 train, 1 val, 2 test
    window_rows: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> context rows (n, K), target rows (n,)
    prepared: Any = None  # lvmlib.data.prepare.Prepared, None for a payload alone
    payload: Path | None = None  # seed-format payload to cross-check against the bank
    encoder: str | None = None

    @property
    def d_vec(self) -> int:
        return int(self.bank_vectors.shape[1])

    def contexts(self, ctx_rows: np.ndarray) -> np.ndarray:
        """(n, K) rows -> (n, K, D) float32: what the models are fed (the trainer reads the same)."""
        if self.prepared is not None:
            return self.prepared.contexts(ctx_rows)
        return np.asarray(self.bank_vectors[np.asarray(ctx_rows)], dtype=np.float32)

    def texts(self, rows) -> list[str] | None:
        return None if self.prepared is None else self.prepared.texts(rows)

    def title(self, article: int) -> str | None:
        arts = getattr(self.prepared, "articles", None)
        return arts[article]["title"] if arts and 0 <= article < len(arts) else None


def load_eval_data(path: str | Path) -> EvalData:
    """A run dir (its `data/`), a data dir, or a seed-format payload `.npz` (the bank is rebuilt from
    the payload's keys: every chunk that appears in some window, target vectors first)."""
    from lvmlib.data.prepare import Prepared

    p = Path(path)
    if p.suffix == ".npz":
        return _data_from_payload(p)
    data_dir = p if (p / "bank_vectors.npy").is_file() else p / "data"
    prep = Prepared(data_dir)
    rows = {s: prep.windows(s) for s in SPLITS}
    payload = data_dir / "payload.npz"
    try:
        encoder = prep.summary.get("encoder")
    except (OSError, ValueError):
        encoder = None
    return EvalData(
        str(data_dir),
        prep.bank_vectors,
        prep.bank_keys,
        prep.bank_split,
        rows,
        prep,
        payload if payload.is_file() else None,
        encoder,
    )


def _codes(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.int64)
    return keys[..., 0] * (1 << 32) + keys[..., 1]


def _payload_arrays(path: Path) -> dict[str, np.ndarray]:
    import zipfile

    from lvmlib.data.payload import npz_member

    out = {}
    for name in ("context_sequences", "target_vectors", "truth_keys", "split"):
        try:
            out[name] = npz_member(path, name)
        except KeyError:
            raise SanityError(
                f"{path}: payload has no '{name}' array (needs context_sequences, target_vectors, truth_keys, split)"
            ) from None
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:  # truncated or not an .npz
            raise SanityError(f"{path}: not a readable payload .npz ({type(exc).__name__}: {exc})") from None
    if out["context_sequences"].ndim != 3:
        raise SanityError(f"{path}: 'context_sequences' has shape {out['context_sequences'].shape}, expected (N, K, D)")
    N, K, D = out["context_sequences"].shape
    shapes = {"target_vectors": (N, D), "truth_keys": (N, 2), "split": (N,)}
    for name, shape in shapes.items():
        if out[name].shape != shape:
            raise SanityError(f"{path}: '{name}' has shape {out[name].shape}, expected {shape}")
    return out


def _data_from_payload(path: Path) -> EvalData:
    if not path.is_file():
        raise SanityError(f"{path}: payload file not found")
    pl = _payload_arrays(path)
    ctx, tv = pl["context_sequences"], pl["target_vectors"]
    tk, sp = np.asarray(pl["truth_keys"], np.int64), np.asarray(pl["split"], np.int8)
    N, K, D = ctx.shape
    ck = np.stack([np.repeat(tk[:, :1], K, 1), tk[:, 1:2] - K + np.arange(K)], -1)  # (N, K, 2) context keys
    codes = np.concatenate([_codes(tk), _codes(ck).ravel()])
    uniq, first = np.unique(codes, return_index=True)  # targets come first: their vectors define the bank
    bank = np.empty((len(uniq), D), np.float32)
    is_t = first < N
    bank[is_t] = tv[np.sort(first[is_t])][np.argsort(np.argsort(first[is_t]))]
    f = first[~is_t] - N
    bank[~is_t] = np.asarray(ctx[f // K, f % K], np.float32)
    keys = np.stack([uniq >> 32, uniq & 0xFFFFFFFF], 1)
    split = np.where(is_t, sp[np.minimum(first, N - 1)], sp[np.clip(first - N, 0, None) // K])
    tgt_rows = np.searchsorted(uniq, _codes(tk))
    ctx_rows = np.searchsorted(uniq, _codes(ck))
    rows = {s: (ctx_rows[sp == i], tgt_rows[sp == i]) for i, s in enumerate(SPLITS)}
    return EvalData(str(path), bank, keys, split.astype(np.int8), rows, None, path, None)


# --------------------------------------------------------------------------- sanity checks
def check_alignment(
    bank_vectors: np.ndarray,
    bank_keys: np.ndarray,
    truth_keys: np.ndarray,
    context_vectors: np.ndarray,
    target_vectors: np.ndarray | None = None,
    *,
    where: str = "windows",
    atol: float | None = None,
    block: int = 4096,
) -> dict[str, Any]:
    """Every truth key (n, 2) and its K context keys (article, p-K..p-1) must be bank keys, and every
    context (n, K, D) / target (n, D) vector must equal the bank vector at its key.
    -> {"context_rows" (n, K), "target_rows" (n,), stats}; raises SanityError naming the first bad window."""
    truth_keys = np.asarray(truth_keys, np.int64)
    n, K = len(truth_keys), context_vectors.shape[1]
    codes = _codes(bank_keys)
    order = np.argsort(codes, kind="stable")
    sc = codes[order]

    def rows_of(c: np.ndarray, what: str) -> np.ndarray:
        pos = np.clip(np.searchsorted(sc, c), 0, max(0, len(sc) - 1))
        found = sc[pos] == c if len(sc) else np.zeros(c.shape, bool)
        if not found.all():
            i = np.argwhere(~found)[0]
            key = (int(c[tuple(i)] >> 32), int(c[tuple(i)] & 0xFFFFFFFF))
            raise SanityError(
                f"{where}: {what} key (article {key[0]}, position {key[1]}) of window {int(i[0])} "
                f"is not in the bank ({int((~found).sum())} missing)"
            )
        return order[pos]

    tgt = rows_of(_codes(truth_keys), "truth")
    ck = np.stack([np.repeat(truth_keys[:, :1], K, 1), truth_keys[:, 1:2] - K + np.arange(K)], -1)  # (n, K, 2)
    ctx = rows_of(_codes(ck), "context")
    if atol is None:
        low = any(np.dtype(a.dtype) == np.float16 for a in (bank_vectors, context_vectors))
        atol = 2e-3 if low else 1e-5
    worst = {"context": 0.0, "target": 0.0}
    for s in range(0, n, block):
        e = min(n, s + block)
        pairs = [("context", np.asarray(context_vectors[s:e], np.float32), ctx[s:e])]
        if target_vectors is not None:
            pairs.append(("target", np.asarray(target_vectors[s:e], np.float32), tgt[s:e]))
        for what, vec, rows in pairs:
            diff = np.abs(vec - np.asarray(bank_vectors[rows.ravel()], np.float32).reshape(vec.shape))
            diff = diff.reshape(e - s, -1).max(axis=1) if diff.size else np.zeros(e - s)
            if not np.isfinite(diff).all() or (diff > atol).any():
                i = int(np.flatnonzero(~(diff <= atol))[0])
                a, p = truth_keys[s + i]
                raise SanityError(
                    f"{where}: the {what} vector of window {s + i} (target key article {a}, position {p}) differs "
                    f"from the bank vector at its key by up to {diff[i]:.3g} (> {atol:g}); contexts and bank must "
                    "live in the same space — was the payload encoded with another model?"
                )
            worst[what] = max(worst[what], float(diff.max(initial=0.0)))
    return {
        "context_rows": ctx,
        "target_rows": tgt,
        "n_windows": int(n),
        "truth_keys_in_bank": True,
        "max_abs_diff_context": worst["context"],
        "max_abs_diff_target": worst["target"] if target_vectors is not None else None,
    }


def check_windows(data: EvalData, split: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    ctx_rows, tgt_rows = data.window_rows[split]
    if len(tgt_rows) == 0:
        raise SanityError(f"{data.source}: the '{split}' split has no window to evaluate")
    rep = check_alignment(
        data.bank_vectors,
        data.bank_keys,
        data.bank_keys[tgt_rows],
        data.contexts(ctx_rows),
        where=f"{data.source} ({split} windows)",
    )
    if not (np.array_equal(rep["context_rows"], ctx_rows) and np.array_equal(rep["target_rows"], tgt_rows)):
        raise SanityError(
            f"{data.source}: window rows disagree with the bank keys (a context is not the K chunks "
            "right before its target in the same article)"
        )
    out = {"windows": {k: v for k, v in rep.items() if not k.endswith("_rows")}}
    if data.payload is not None:
        pl = _payload_arrays(data.payload)
        m = np.asarray(pl["split"]) == SPLITS.index(split)
        rep = check_alignment(
            data.bank_vectors,
            data.bank_keys,
            pl["truth_keys"][m],
            pl["context_sequences"][m],
            pl["target_vectors"][m],
            where=f"{data.payload} ({split} windows)",
        )
        if set(_codes(pl["truth_keys"][m]).tolist()) != set(_codes(data.bank_keys[tgt_rows]).tolist()):
            raise SanityError(f"{data.payload}: its {split} windows are not the windows of {data.source}")
        out["payload"] = {k: v for k, v in rep.items() if not k.endswith("_rows")}
    return ctx_rows, tgt_rows, out


def check_bank(bank: np.ndarray, chunk: int, where: str = "bank") -> dict[str, Any]:
    lo, hi = np.inf, -np.inf
    for s in range(0, len(bank), chunk):
        b = np.asarray(bank[s : s + chunk], np.float32)
        if not np.isfinite(b).all():
            bad = s + int(np.flatnonzero(~np.isfinite(b).all(axis=1))[0])
            raise SanityError(f"{where}: bank row {bad} (rows {s}..{s + len(b) - 1}) has NaN/inf values")
        nrm = np.linalg.norm(b, axis=1)
        lo, hi = min(lo, float(nrm.min())), max(hi, float(nrm.max()))
    if lo < 0.99 or hi > 1.01:
        raise SanityError(
            f"{where}: bank vectors are not L2-normalised (norms in [{lo:.4f}, {hi:.4f}]); inner-product "
            "search would not rank by cosine"
        )
    return {"finite": True, "norm_min": lo, "norm_max": hi}
