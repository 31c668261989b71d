"""JupyterLab for the study: `python -m lvmlib lab` (what `make lab` runs).

Starts the JupyterLab pinned in requirements.lock from this interpreter, bound to 127.0.0.1 only,
without opening a browser (the server prints its URL with the access token), rooted at the project
so `notebooks/` and `runs/` are both in the file browser, with the `lvm-study` kernel registered and
made the default (as root, e.g. in a container, it is allowed to run). Nothing is fetched from the internet: JupyterLab's news feed, update check and the
PyPI extension manager are switched off.

A notebook opened from notebooks/ starts its kernel there; `runner.notebook_config` moves it to the
project root when `run_dir` is given relative to it (`runs/<run_id>`), as on the command line.
"""

from __future__ import annotations

import os
import sys

from lvmlib.core.runs import PROJECT_ROOT


def lab_argv(port: int = 8888, token: str | None = None, port_retries: int = 50) -> list[str]:
    """The command line that starts the study's JupyterLab (the test suite starts it the same way)."""
    from lvmlib.core.paths import KERNEL_NAME

    argv = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--ServerApp.port_retries={port_retries}",
        f"--ServerApp.root_dir={PROJECT_ROOT}",
        "--LabApp.default_url=/lab/tree/notebooks",
        f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if token is not None:
        argv.append(f"--IdentityProvider.token={token}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI run as root; the server is loopback-only
        argv.append("--ServerApp.allow_root=True")
    return argv


def main(port: int = 8888, token: str | None = None) -> None:
    """Register the kernel, say what to do, then become the JupyterLab server (Ctrl-C stops it)."""
    from lvmlib.app.execute import ensure_kernel

    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        from lvmlib.core.errors import RunError

        raise RunError(
            "JupyterLab is not installed in this environment: run `make setup` "
            "(it installs the pins in requirements.lock)"
        ) from None
    kernel = ensure_kernel()
    print(
        f"[lvm-study] JupyterLab on 127.0.0.1 (kernel '{kernel}'); open the URL with the token printed below.\n"
        '[lvm-study] In notebooks/NN_name.ipynb set run_dir = "runs/<run_id>" in the parameters cell, '
        "then Run All; `python -m lvmlib run --resume runs/<run_id> --only NN_name` re-renders its report.",
        flush=True,
    )
    argv = lab_argv(port, token)
    os.chdir(PROJECT_ROOT)
    os.execv(argv[0], argv)
