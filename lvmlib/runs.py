"""Run directories, manifests and crash-safe writes.

Every file a run produces goes through `atomic_write_*` (temp file in the same directory, fsync,
rename), so a crash leaves either the old file or the new one, never half of one. The run
directory layout is the contract between notebooks (see README "Run directory").
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from filelock import FileLock

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_UMASK = os.umask(0)
os.umask(_UMASK)
STATUSES = ("running", "succeeded", "failed")


class RunError(RuntimeError):
    """Something about a run directory is wrong (missing input file, bad status...)."""


# --------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; files we publish follow the umask like open()
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.filename is None:  # fsync/write errors (a full disk) carry no path: name the file we wrote
            exc.filename = str(path)
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: missing (did the stage that writes it run?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None


# --------------------------------------------------------------------------- progress
def progress_bar(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 enabled: bool = True, **kw):
    """One progress bar for terminal, papermill and Jupyter: a widget when ipywidgets is installed,
    else the plain bar (its carriage returns are collapsed when reports are rendered)."""
    try:
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm
    kw.setdefault("mininterval", 2.0)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, **kw)


# --------------------------------------------------------------------------- run directory
def new_run_id(name: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{name}-{secrets.token_hex(2)}"


def create_run_dir(runs_root: str | Path, run_id: str) -> Path:
    """Create runs/<run_id>/ exclusively: two runs can never share (clobber) a directory."""
    root = Path(runs_root)
    run_dir = root / run_id
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a directory should be, a read-only place...
        raise RunError(f"{root}: cannot create the runs directory ({exc.strerror or exc})") from None
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise RunError(f"{run_dir}: run directory already exists; pick another --run-id or use --resume") from None
    except OSError as exc:
        raise RunError(f"{run_dir}: cannot create the run directory ({exc.strerror or exc})") from None
    for sub in ("data", "metrics", "notebooks"):
        (run_dir / sub).mkdir()
    return run_dir


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        sha = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    return {"git_sha": sha, "git_dirty": dirty}


def package_versions() -> dict[str, str]:
    from importlib import metadata
    out = {"python": platform.python_version()}
    for name in ("torch", "numpy", "sentence-transformers", "transformers", "papermill", "faiss-cpu",
                 "mamba-ssm", "lvmlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        import torch
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            info["cuda_device"] = torch.cuda.get_device_name(0)
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return info


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def write_manifest(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Create or update manifest.json (merging fields) atomically, under the run's lock."""
    run_dir = Path(run_dir)
    path = run_dir / "manifest.json"
    with FileLock(str(run_dir / ".manifest.lock")):
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        manifest.update(fields)
        if manifest.get("status") not in (None, *STATUSES):
            raise RunError(f"{path}: bad status {manifest.get('status')!r}")
        atomic_write_json(path, manifest)
    return manifest


def update_manifest(run_dir: str | Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read-modify-write manifest.json under the run's lock: `change(manifest)` edits it in place
    (for lists such as `tweaks`, which `write_manifest`'s merge of top-level fields would overwrite)."""
    run_dir = Path(run_dir)
    path = run_dir / "manifest.json"
    with FileLock(str(run_dir / ".manifest.lock")):
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        change(manifest)
        atomic_write_json(path, manifest)
    return manifest


def start_manifest(run_dir: Path, run_id: str, params_path: str, overrides: list[str], seed: int,
                   params_name: str) -> dict[str, Any]:
    return write_manifest(
        run_dir, run_id=run_id, params_path=str(params_path), params_name=params_name,
        overrides=list(overrides), seed=seed, status="running", started_at=now_iso(), ended_at=None,
        pid=os.getpid(), host=platform.node(), argv=sys.argv, **git_info(),
        packages=package_versions(), device=device_info(), stages={}, failure=None)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / "manifest.json")
