"""The seed's `payload.npz` format: a streaming writer and a member-by-member reader.

The seed's payload format: one uncompressed .npz (`context_sequences [N,K,D]`, `target_vectors [N,D]`,
`truth_keys [N,2]`, `split [N]`), written in row blocks and read member by member without loading it
whole (np.load would read an npz member into RAM).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lvmlib.core.runs import atomic_path, check_files


# --------------------------------------------------------------------------- writing
def save_npz_streaming(
    path: Path, arrays: dict[str, tuple[tuple[int, ...], Any, Callable[[int, int], np.ndarray]]], block: int = 8192
) -> None:
    """Write an .npz whose arrays are produced in row blocks by fill(start, stop) (bounded memory)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, (shape, dtype, fill) in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                header = {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                    "fortran_order": False,
                    "shape": tuple(shape),
                }
                np.lib.format.write_array_header_2_0(fh, header)
                for s in range(0, shape[0], block):
                    fh.write(np.ascontiguousarray(fill(s, min(shape[0], s + block)), dtype=dtype).tobytes())


def write_payload(
    path: Path, bank_path: Path, ctx: np.ndarray, tgt: np.ndarray, keys: np.ndarray, wsplit: np.ndarray
) -> None:
    """The payload of a data dir's windows: vectors copied from the bank (M, D) in row blocks.
    ctx (N, K) and tgt (N) are bank rows, keys (M, 2) the bank's (article, position), wsplit (N)."""
    bank = np.load(bank_path, mmap_mode="r")  # (M, D), never read whole
    N, K, D = len(tgt), ctx.shape[1], bank.shape[1]
    save_npz_streaming(
        path,
        {
            "context_sequences": ((N, K, D), bank.dtype, lambda s, e: bank[ctx[s:e]]),  # (N, K, D)
            "target_vectors": ((N, D), bank.dtype, lambda s, e: bank[tgt[s:e]]),  # (N, D)
            "truth_keys": ((N, 2), np.int64, lambda s, e: keys[tgt[s:e]]),  # (N, 2)
            "split": ((N,), np.int8, lambda s, e: wsplit[s:e]),
        },
    )  # (N)


def export_run(run_dir: str | Path, fmt: str = "seed-npz", out: str | Path | None = None) -> Path:
    """`python -m lvmlib export RUN --format seed-npz [--out PATH]`: a prepared run's windows in the seed's
    payload format (default RUN/payload.npz), copied from `data/` in row blocks. -> the file written."""
    from lvmlib.core.config import EXPORT_FORMATS
    from lvmlib.core.errors import RunError

    if fmt not in EXPORT_FORMATS:
        raise RunError(f"export --format {fmt!r}: formats are {', '.join(EXPORT_FORMATS)}")
    run_dir = Path(run_dir)
    data_dir = run_dir / "data"
    missing = [n for n in ("bank_vectors.npy", "bank_keys.npy", "windows.npz") if not (data_dir / n).is_file()]
    if missing:
        raise RunError(f"{data_dir}: no prepared data to export (missing {', '.join(missing)}; did 01_data run?)")
    out = Path(out) if out else run_dir / "payload.npz"
    check_files([data_dir / n for n in ("bank_vectors.npy", "bank_keys.npy", "windows.npz")])
    with np.load(data_dir / "windows.npz") as w:
        ctx, tgt, wsplit = w["context_idx"], w["target_idx"], w["split"]  # (N, K), (N), (N)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_payload(out, data_dir / "bank_vectors.npy", ctx, tgt, np.load(data_dir / "bank_keys.npy"), wsplit)
    return out


# --------------------------------------------------------------------------- reading
def _npz_member_info(path: Path, name: str) -> tuple[int, np.dtype, tuple[int, ...], bool] | None:
    """(data offset, dtype, shape, fortran) of an uncompressed member of an .npz; None if compressed."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        n_name, n_extra = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        fh.seek(info.header_offset + 30 + n_name + n_extra)
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(fh)
        return fh.tell(), dtype, shape, fortran


def npz_member(path: str | Path, name: str) -> np.ndarray:
    """One array of an uncompressed .npz, memory-mapped (np.load reads npz members into RAM)."""
    path = Path(path)
    info = _npz_member_info(path, name)
    if info is None:
        with np.load(path) as z:
            return z[name]
    offset, dtype, shape, fortran = info
    if 0 in shape:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def npz_row_blocks(path: Path, name: str, block: int) -> Iterator[np.ndarray]:
    """Rows of an npz member in blocks, by plain reads: unlike a memmap, pages read stay out of our RSS."""
    info = _npz_member_info(path, name)
    if info is None:
        with np.load(path) as z:
            arr = z[name]
        yield from (arr[s : s + block] for s in range(0, len(arr), block))
        return
    offset, dtype, shape, _ = info
    row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    with open(path, "rb") as fh:
        fh.seek(offset)
        for s in range(0, shape[0], block):
            n = min(block, shape[0] - s)
            yield np.frombuffer(fh.read(n * row), dtype=dtype).reshape((n, *shape[1:]))
