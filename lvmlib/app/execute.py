"""Executing notebooks: the one place that starts a kernel and runs a notebook in it.

Every notebook the kit executes (the study's stages, `eval` elsewhere, comparisons, scaling pages) goes
through `execute_notebook`: papermill with the project's `lvm-study` kernel over local IPC sockets,
`LVM_RUNNER=1` in the kernel's environment, Ctrl-C/SIGTERM routed to the running cell (`Signals`).
`run_notebook` adds what every caller does next: render the executed notebook (also a failed one:
papermill's banner marks the cell) and reduce a failure to one line (`failure_line`). A kernel that dies
under a cell (the out-of-memory killer's SIGKILL) is `KernelDied`, saying how it ended and in which cell.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvmlib.core.errors import KernelDied
from lvmlib.core.paths import KERNEL_NAME, PROJECT_ROOT
from lvmlib.core.runs import record_file

RUNNER_ENV = "LVM_RUNNER"  # set in the kernels the kit starts: notebook_config then records no tweak
INTERRUPT_GRACE_S = 20.0  # after Ctrl-C/SIGTERM, a kernel that has not stopped by then is killed
LIKELY_CAUSE = {signal.SIGKILL: "likely out of memory"}  # the kernel's OOM killer sends SIGKILL


def ensure_kernel() -> str:
    """Make sure the `lvm-study` kernelspec exists and points at this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name="lvm-study", prefix=sys.prefix)
    return KERNEL_NAME


class Stop:
    """Ctrl-C / SIGTERM while the study runs. The kernel runs in a session of its own (jupyter_client),
    so a terminal's Ctrl-C never reaches it and the runner would wait for the cell to finish; instead
    the first signal interrupts the kernel at once (KeyboardInterrupt inside the running cell, so
    `finally` blocks clean up: the data stage's staging dir, a half-written file), and a kernel that
    has not stopped after INTERRUPT_GRACE_S, or a second signal, is killed."""

    signum: int | None = None
    km = None  # the KernelManager of the notebook being executed, if any
    executing = False

    @classmethod
    def _kernel_signal(cls, sig: int) -> bool:
        proc = getattr(getattr(cls.km, "provisioner", None), "process", None)
        if proc is None or proc.poll() is not None:
            return False
        try:
            os.killpg(os.getpgid(proc.pid), sig)  # the kernel and what it started (torchrun ranks)
        except OSError:
            return False
        return True

    @classmethod
    def handler(cls, signum, frame) -> None:
        first = cls.signum is None
        cls.signum = cls.signum or signum
        if cls.executing and cls._kernel_signal(signal.SIGINT if first else signal.SIGKILL):
            if first:
                threading.Thread(target=cls._watchdog, args=(cls.km,), daemon=True).start()
            return
        raise KeyboardInterrupt  # no kernel is running a cell: stop the runner where it is

    @classmethod
    def _watchdog(cls, km) -> None:
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if cls.km is not km or not cls.executing:
                return
        if cls.km is km and cls.executing:
            cls._kernel_signal(signal.SIGKILL)


class Signals:
    """Route SIGINT and SIGTERM to `Stop.handler` while a study runs (main thread only)."""

    def __enter__(self):
        Stop.signum, Stop.km, Stop.executing = None, None, False
        self.old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, Stop.handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)


def execute_notebook(src: Path, out: Path, params: dict[str, Any], progress: bool = False, output=None) -> None:
    """papermill with the project's kernel over local IPC sockets (not unencrypted TCP ports).

    The kernel gets `LVM_RUNNER=1` in its environment: `notebook_config` then knows the runner executes
    the notebook (anything else, Jupyter or papermill by hand, is recorded as a tweak of the run).
    `output`: a file-like that receives the kernel's stdout/stderr text as it arrives (the console's
    sink); None drops it (the executed notebook keeps it either way). `progress`: papermill's own
    per-cell bar and log, for debugging. Under `Signals`, Ctrl-C/SIGTERM interrupt the kernel's running
    cell at once (see `Stop`).
    """
    import papermill as pm
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync
    from nbclient.exceptions import DeadKernelError

    sock_dir = tempfile.mkdtemp(prefix="lvm-kernel-")
    # The async manager (nbclient's own default): its client's reads are awaitable, so nbclient's
    # kernel-alive check runs while a cell waits, and a kernel that dies without its last messages
    # raises DeadKernelError instead of leaving a blocking poll with no timeout waiting forever.
    km = AsyncKernelManager(kernel_name=ensure_kernel(), transport="ipc", ip=os.path.join(sock_dir, "k"))
    proc = None  # the kernel's Popen, kept: the provisioner drops it once the kernel is reaped
    try:
        if Stop.signum is not None:
            raise KeyboardInterrupt
        Stop.km, Stop.executing = km, True
        run_sync(km.start_kernel)(env={**os.environ, RUNNER_ENV: "1"}, cwd=str(PROJECT_ROOT))
        proc = getattr(km.provisioner, "process", None)
        pm.execute_notebook(
            str(src),
            str(out),
            parameters=params,
            kernel_name=km.kernel_name,
            km=km,
            progress_bar=progress,
            log_output=progress,
            cwd=str(PROJECT_ROOT),
            stdout_file=output,
            stderr_file=output,
        )
    except DeadKernelError as exc:
        raise KernelDied(kernel_end(proc), _running_cell(out)) from exc
    finally:
        Stop.executing = False
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)
        Stop.km = None
        shutil.rmtree(sock_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # never hides the cell's error; a digest lost only goes unchecked
            record_file(out)  # papermill wrote it in place: its digest goes in the run's manifest (none outside a run)


def kernel_end(proc) -> str:
    """How a dead kernel ended, in words, from its process's exit status (a Popen's returncode: -N = signal N)."""
    import subprocess

    try:
        code = proc.wait(timeout=10) if proc is not None else None  # nbclient saw it dead: reaped or reapable
    except subprocess.TimeoutExpired:
        code = None
    if code is None:
        return "the kernel died (its exit status is unknown)"
    if code >= 0:
        return f"the kernel exited with status {code}"
    try:
        sig = signal.Signals(-code)
    except ValueError:
        return f"the kernel was killed by signal {-code}"
    cause = f" — {LIKELY_CAUSE[sig]}" if sig in LIKELY_CAUSE else ""
    return f"the kernel was killed by {sig.name} (signal {sig.value}){cause}"


def _running_cell(executed: Path) -> int | None:
    """The execution count of the cell a dead kernel was running: the last cell papermill started."""
    import nbformat

    try:
        nb = nbformat.read(str(executed), as_version=4)
    except (OSError, ValueError):
        return None
    started = [c for c in nb.cells if c.cell_type == "code" and c.metadata.get("papermill", {}).get("start_time")]
    return started[-1].get("execution_count") if started else None


def failure_line(name: str, exc: BaseException) -> str:
    """'NAME (cell N): ErrorName: first line of the message' — the one line a failed notebook is reported by
    ('NAME (cell N): the kernel was killed by ...' for a dead kernel)."""
    if isinstance(exc, KernelDied):
        cell = f" (cell {exc.exec_count})" if exc.exec_count is not None else ""
        return f"{name}{cell}: {exc}"
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    first = str(evalue).strip().splitlines()[0] if str(evalue).strip() else ""
    cell = getattr(exc, "exec_count", None)
    where = f" (cell {cell})" if cell is not None else ""
    return f"{name}{where}: {ename}: {first}"


def declared_parameters(notebook: Path) -> set[str]:
    """The names a notebook's `parameters` cell declares."""
    import papermill as pm

    return set(pm.inspect_notebook(str(notebook)))


@dataclass
class NotebookFailure:
    """A notebook that failed: the one-line reason and the exception behind it."""

    line: str
    exc: BaseException


def run_notebook(
    src: Path,
    executed: Path,
    params: dict[str, Any],
    html_out: Path,
    name: str,
    nav: list[tuple[str, str]] | None = None,
    progress: bool = False,
) -> NotebookFailure | None:
    """Execute `src` into `executed`, render what ran to `html_out` (+ `.code.html`) and return None, or
    the failure (`name (cell N): Error: first line`) after rendering the failed notebook."""
    from lvmlib.report.pages import render_html

    err: BaseException | None = None
    try:
        execute_notebook(src, executed, params, progress)
    except Exception as exc:  # papermill raises PapermillExecutionError for a failing cell
        err = exc
    if executed.is_file():
        render_html(executed, html_out, nav=nav)
    return None if err is None else NotebookFailure(failure_line(name, err), err)
