"""Run directories, manifests and crash-safe writes.

Every file a run produces goes through `atomic_write_*` (temp file in the same directory, fsync,
rename), so a crash leaves either the old file or the new one, never half of one. The run
directory layout is the contract between notebooks (docs/DESIGN.md, "Run directory").

A file written inside a run dir gets its sha256 and size recorded in `manifest.json` ("files") under the
manifest's lock, in the same critical section as its rename (`publish_recorded`); readers call
`check_files` before using a file, `verify_run` checks them all (`python -m lvmlib verify`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import io
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from lvmlib.core import digests
from lvmlib.core.errors import IntegrityError, RunError
from lvmlib.core.paths import ENGINE, PROJECT_ROOT

_UMASK = os.umask(0)
os.umask(_UMASK)
STATUSES = ("running", "succeeded", "failed", "interrupted")
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LOCK_NAME = ".run.lock"  # held (flock) by the process that runs or trains the run; records its pid and host


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
        publish_recorded({path: tmp_path}, lambda: os.replace(tmp_path, path))
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
    """A JSON file of the kit; inside a run dir its recorded digest is checked first (IntegrityError)."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: missing (did the stage that writes it run?)")
    check_files([path])
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None


# --------------------------------------------------------------------------- progress
def progress_bar(
    iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True, **kw
):
    """One progress bar for terminal, executed notebooks and Jupyter: a widget when ipywidgets is installed,
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
def pid_alive(pid: int) -> bool:
    """Is process `pid` running on this host? (signal 0: no signal sent, only the permission check)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_run_id(run_id: str, what: str = "--run-id") -> str:
    """A run id names a folder under runs/ and reports/: no path separators, '..', spaces or control
    characters, so it can never point outside them (the tool often runs as root)."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise RunError(
            f"{what} {run_id!r}: a run id is 1-128 characters from A-Z a-z 0-9 . _ - and starts "
            "with a letter or digit (no '/', '..', spaces or control characters)"
        )
    return run_id


def new_run_id(name: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:80] or "run"  # params `name:` is free text
    return f"{stamp}-{name}-{secrets.token_hex(2)}"


def create_run_dir(runs_root: str | Path, run_id: str) -> Path:
    """Create runs/<run_id>/ exclusively: two runs can never share (clobber) a directory."""
    check_run_id(run_id)
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
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    return {"git_sha": sha, "git_dirty": dirty}


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "numpy", "sentence-transformers", "transformers", ENGINE, "faiss-cpu", "mamba-ssm", "lvmlib"):
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
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


def write_manifest(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Create or update manifest.json (merging fields) atomically, under the run's lock."""
    run_dir = Path(run_dir)
    path = run_dir / "manifest.json"
    with FileLock(str(run_dir / ".manifest.lock")):
        manifest = read_json(path) if path.is_file() else {}
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


def start_manifest(
    run_dir: Path, run_id: str, params_path: str, overrides: list[str], seed: int, params_name: str
) -> dict[str, Any]:
    return write_manifest(
        run_dir,
        run_id=run_id,
        params_path=str(params_path),
        params_name=params_name,
        overrides=list(overrides),
        seed=seed,
        status="running",
        started_at=now_iso(),
        ended_at=None,
        pid=os.getpid(),
        host=platform.node(),
        argv=sys.argv,
        **git_info(),
        packages=package_versions(),
        device=device_info(),
        stages={},
        failure=None,
    )


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / "manifest.json")


# --------------------------------------------------------------------------- the live-run lock
def _lock_record(path: Path) -> dict[str, Any]:
    try:
        rec = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def describe_holder(rec: dict[str, Any]) -> str:
    what = f" ({rec['what']})" if rec.get("what") else ""
    return f"pid {rec.get('pid', '?')} on host {rec.get('host', '?')}{what} since {rec.get('since', '?')}"


def lock_state(run_dir: str | Path) -> tuple[bool | None, dict[str, Any]]:
    """(live, record of the last holder): live True while a process holds the run's lock, False when
    the lock is free (a recorded holder then ended or was killed), None when the run never had one.
    Reads only: a shared non-blocking flock probe, released at once."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None, {}
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _lock_record(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, _lock_record(path)
    finally:
        os.close(fd)


def _started_by(rec: dict[str, Any]) -> bool:
    """Was this process started by the lock's holder (a notebook kernel of the runner, a torchrun rank)?"""
    if rec.get("host") != platform.node() or not isinstance(rec.get("pid"), int):
        return False
    if rec["pid"] == os.getpid():
        return True
    import psutil

    try:
        return any(p.pid == rec["pid"] for p in psutil.Process().parents())
    except psutil.Error:
        return False


class RunLock:
    """The live-run lock `runs/<id>/.run.lock`: an flock held for as long as a process runs or trains
    the run, so the operating system releases it when that process dies however it dies (a stale
    lock from a dead process is simply taken over). The file records pid, host and start time for
    messages; a process started by the holder shares its lock (`owned` False) instead of refusing."""

    def __init__(self, run_dir: str | Path, what: str):
        self.run_dir, self.path, self.fd, self.owned = Path(run_dir), Path(run_dir) / LOCK_NAME, None, False
        self.taken_over: dict[str, Any] = {}
        if not self.run_dir.is_dir():  # nothing to protect yet; the caller's own check names the problem
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            rec = _lock_record(self.path)
            if _started_by(rec):
                return
            raise RunError(
                f"{self.run_dir}: the run is live: {describe_holder(rec)} holds {self.path.name}; "
                f"{what} refused. Wait for it to end or stop it first (Ctrl-C, or kill "
                f"{rec.get('pid', 'its pid')})"
            ) from None
        self.fd, self.owned = fd, True
        self.taken_over = _lock_record(self.path)  # the record of a holder that is gone, if any
        rec = {"pid": os.getpid(), "host": platform.node(), "since": now_iso(), "what": what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(rec).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)  # never unlinked: a waiter may hold the old inode open
            finally:
                os.close(self.fd)  # releases the flock
                self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------- content digests
def _manifest_lock(run_dir: Path) -> FileLock:
    return FileLock(str(run_dir / ".manifest.lock"))


def _recorded(run_dir: Path) -> dict[str, Any] | None:
    """The manifest's "files" (None: no readable run manifest, or a run made before digests)."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    return files if isinstance(files, dict) else None


def publish_recorded(files: dict[Path, Path], publish: Callable[[], None], drop_prefix: str | None = None) -> None:
    """`publish()` makes `files` (final path -> the path holding its bytes now) visible; when they lie in a
    run dir, their digests (hashed before, streamed) are recorded in its manifest under the manifest lock,
    with the publish, so a reader never sees a new file beside an old record for long. `drop_prefix`
    forgets recorded files under it that `files` does not hold (a republished `data/`)."""
    where = {final: digests.find_run(final) for final in files}
    runs = {w[0] for w in where.values() if w is not None}
    if not runs:
        publish()
        return
    (run_dir,) = runs  # one publish never spans two runs
    entries = {}
    for final, w in where.items():
        if w is not None:
            entries[w[1]] = {**digests.file_digest(files[final]), "at": now_iso()}
    with _manifest_lock(run_dir):
        publish()
        path = run_dir / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):  # an unreadable manifest: the run's own reader names it
            return
        if not isinstance(manifest, dict) or "run_id" not in manifest:  # a manifest.json of something else
            return
        rec = manifest.setdefault("files", {})
        if drop_prefix:
            for rel in [r for r in rec if r.startswith(drop_prefix) and r not in entries]:
                del rec[rel]
        rec.update(entries)
        atomic_write_json(path, manifest)
    for final, w in where.items():
        if w is not None:
            digests.remember(final, entries[w[1]]["sha256"])


def record_file(path: str | Path) -> None:
    """Record the digest of a file written in place by another tool (papermill's executed notebook)."""
    path = Path(path)
    if path.is_file():
        publish_recorded({path: path}, lambda: None)


def _judge_all(run_dir: Path, rels: list[str]) -> dict[str, str]:
    files = _recorded(run_dir) or {}
    return {rel: why for rel in rels if rel in files and (why := digests.judge(run_dir / rel, files[rel])) is not None}


def check_digests(run_dir: str | Path, relpaths: list[str]) -> None:
    """IntegrityError naming the first of `relpaths` (inside `run_dir`) whose content differs from its
    recorded digest, and what to do. Files with no record (a run made before digests) and missing files
    (their reader names them) pass. A mismatch is judged again under the manifest lock, since a writer
    may be between its rename and its record."""
    run_dir = Path(run_dir)
    rels = [r for r in relpaths if (run_dir / r).is_file()]
    if not rels or _recorded(run_dir) is None:
        return
    bad = _judge_all(run_dir, rels)
    if bad:
        try:
            with _manifest_lock(run_dir):
                bad = _judge_all(run_dir, list(bad))
        except OSError:  # a read-only run dir: no lock to take, and no writer either
            bad = _judge_all(run_dir, list(bad))
    if bad:
        rel, why = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more changed file(s): python -m lvmlib verify {run_dir})" if len(bad) > 1 else ""
        raise IntegrityError(f"{run_dir / rel}: {why} since the run wrote it; {digests.hint(rel, run_dir)}{more}")


def check_files(paths: list[str | Path]) -> None:
    """`check_digests` for files given by path: those inside a run dir are checked against its record."""
    by_run: dict[Path, list[str]] = {}
    for p in paths:
        w = digests.find_run(p)
        if w is not None:
            by_run.setdefault(w[0], []).append(w[1])
    for run_dir, rels in by_run.items():
        check_digests(run_dir, rels)


def verify_run(run_dir: str | Path) -> dict[str, Any] | None:
    """Every recorded file of a run judged: {"intact": {rel: size}, "bad": {rel: why}}; None for a run made
    before digests. RunError when `run_dir` is not a run directory."""
    run_dir = Path(run_dir)
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run directory (no manifest.json)")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or "run_id" not in manifest:
        raise RunError(f"{path}: not a run manifest (a JSON object with run_id)")
    files = manifest.get("files")
    if not isinstance(files, dict):
        return None
    out: dict[str, Any] = {"intact": {}, "bad": {}}
    for rel, rec in sorted(files.items()):
        why = digests.judge(run_dir / rel, rec)
        if why is None:
            out["intact"][rel] = int(rec.get("size", 0))
        else:
            out["bad"][rel] = why
    return out
