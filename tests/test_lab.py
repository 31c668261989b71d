"""JupyterLab as a user gets it from `make lab`: started by `python -m lvmlib lab` on a free loopback
port, the `lvm-study` kernelspec served, a stage notebook opened in headless Chromium through the
Lab UI, and a notebook executed against a smoke run by the server's own kernel (REST + the kernel
websocket protocol, as the Lab frontend does — no nbconvert, no papermill). That execution is a
tweak of the run: it is recorded, and `run --resume RUN --only 03_gates` re-renders its report.

The server is shut down and its runtime files and port are checked gone, pass or fail.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_pins_what_the_lock_pins():
    """`make setup` (requirements.lock) and conda (environment.yml) install the same JupyterLab."""
    lock = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert lock.get("jupyterlab"), "JupyterLab is pinned in requirements.lock"
    env = (ROOT / "environment.yml").read_text()
    assert "-r requirements.lock" in env and f"jupyterlab=={lock['jupyterlab']}" in env


def test_lab_command_line_binds_loopback_without_browser_or_network():
    from lvmlib.app.lab import lab_argv

    argv = lab_argv(port=9999, token="t")
    assert argv[1:3] == ["-m", "jupyterlab"] and "--no-browser" in argv
    assert "--ServerApp.ip=127.0.0.1" in argv and "--ServerApp.port=9999" in argv
    assert "--MappingKernelManager.default_kernel_name=lvm-study" in argv
    assert "--LabApp.news_url=None" in argv and "--LabApp.extension_manager=readonly" in argv
    assert "--IdentityProvider.token=t" in argv


# --------------------------------------------------------------------------- a running JupyterLab
class Lab:
    def __init__(self, url: str, token: str):
        self.url, self.token = url.rstrip("/"), token

    def api(self, method: str, path: str, body: dict | None = None):
        req = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
        return json.loads(raw) if raw else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`python -m lvmlib lab` (what `make lab` runs) with private Jupyter dirs; stopped afterwards."""
    tmp = tmp_path_factory.mktemp("lab")
    token, port = secrets.token_hex(16), _free_port()
    env = dict(
        os.environ,
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
        IPYTHONDIR=str(tmp / "ipython"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    log = open(tmp / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lvmlib", "lab", "--port", str(port), "--token", token],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        end = time.time() + 180
        info = None
        while info is None:
            if proc.poll() is not None or time.time() > end:
                pytest.fail(f"JupyterLab did not start (exit {proc.poll()}):\n{(tmp / 'lab.log').read_text()[-3000:]}")
            files = list((tmp / "runtime").glob("jpserver-*.json"))
            info = json.loads(files[0].read_text()) if files else None
            if info is None:
                time.sleep(0.5)
        server = Lab(f"http://127.0.0.1:{info['port']}", token)
        assert info["port"] == port and "127.0.0.1" in info["url"]
        while True:
            try:
                server.api("GET", "/api/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.time() > end:
                    raise
                time.sleep(0.5)
        yield server
    finally:
        try:
            Lab(f"http://127.0.0.1:{port}", token).api("POST", "/api/shutdown")
        except Exception:
            pass
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
        leftovers = list((tmp / "runtime").glob("jpserver-*"))
        assert not _port_open(port), f"port {port} still open after the server stopped"
        assert not leftovers, f"server runtime files left behind: {leftovers}"
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_lab_serves_the_lvm_study_kernel(lab):
    specs = lab.api("GET", "/api/kernelspecs")
    assert specs["default"] == "lvm-study", specs["default"]
    spec = specs["kernelspecs"]["lvm-study"]["spec"]
    assert spec["language"] == "python" and "lvm-study" in spec["display_name"]
    assert Path(spec["argv"][0]).resolve() == Path(sys.executable).resolve(), spec["argv"]


@pytest.mark.slow
@pytest.mark.browser
def test_a_stage_notebook_opens_in_the_lab_ui(lab, browser):
    """The page a user opens: JupyterLab's UI loads 01_data.ipynb, renders its title and starts the
    notebook's kernel, lvm-study."""
    browser.events.clear()
    browser.call("Page.navigate", url=f"{lab.url}/lab/tree/notebooks/01_data.ipynb?token={lab.token}")
    title_js = (
        "(() => { const h = document.querySelector('.jp-NotebookPanel .jp-MarkdownOutput h1');"
        " return h ? h.textContent : null; })()"
    )
    end, title = time.time() + 180, None
    while time.time() < end and not title:
        time.sleep(0.5)
        title = browser.evaluate(title_js)
    try:
        assert title and title.startswith("01 · Data"), f"notebook title not rendered in Lab (got {title!r})"
        sessions = []
        while time.time() < end and not sessions:
            sessions = [s for s in lab.api("GET", "/api/sessions") if s["path"].endswith("01_data.ipynb")]
            time.sleep(0.5)
        assert sessions and sessions[0]["kernel"]["name"] == "lvm-study", sessions
    finally:
        browser.call("Page.navigate", url="about:blank")


# --------------------------------------------------------------------------- a notebook on the server's kernel
def _execute(ws, session_id: str, code: str) -> list[dict]:
    """One execute_request on the kernel's websocket; -> the cell's outputs, as the Lab frontend gets them."""
    from jupyter_client.session import Session

    msg = Session(session=session_id, username="test").msg(
        "execute_request",
        content={
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
    )
    msg["channel"] = "shell"
    ws.send(json.dumps(msg, default=str))
    outputs, replied, idle = [], False, False
    while not (replied and idle):
        m = ws.recv()
        if m.get("parent_header", {}).get("msg_id") != msg["header"]["msg_id"]:
            continue
        kind = m["header"]["msg_type"]
        if kind in ("stream", "display_data", "execute_result", "error"):
            outputs.append({"output_type": kind, **m["content"]})
        elif kind == "execute_reply":
            replied = True
            if m["content"]["status"] != "ok":
                raise AssertionError(f"cell failed: {m['content'].get('ename')}: {m['content'].get('evalue')}\n{code}")
        elif kind == "status" and m["content"]["execution_state"] == "idle":
            idle = True
    return outputs


@pytest.mark.slow
def test_a_notebook_runs_on_the_labs_kernel_against_a_run_and_is_recorded(lab, smoke_run, tmp_path):
    from cdp import WebSocket

    from lvmlib.core.runs import read_json

    run, reports = tmp_path / "runs" / "smoke", tmp_path / "reports"
    shutil.copytree(smoke_run, run)
    shutil.copytree(smoke_run.parent.parent / "reports" / "smoke", reports / "smoke")
    manifest = read_json(run / "manifest.json")
    (run / "manifest.json").write_text(json.dumps({**manifest, "reports_root": str(reports)}))
    nb = json.loads((ROOT / "notebooks/03_gates.ipynb").read_text())
    session = lab.api(
        "POST",
        "/api/sessions",
        {
            "path": "notebooks/03_gates.ipynb",
            "name": "03_gates.ipynb",
            "type": "notebook",
            "kernel": {"name": "lvm-study"},
        },
    )
    ws = WebSocket(
        f"ws://127.0.0.1:{lab.url.rsplit(':', 1)[1]}/api/kernels/{session['kernel']['id']}/channels?token={lab.token}",
        timeout=600,
    )
    try:
        outputs = []
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            code = "".join(cell["source"])
            if "parameters" in cell["metadata"].get("tags", []):  # what a user types in the parameters cell
                code += f"\nrun_dir = {str(run)!r}\noverrides = ['gates.threshold=0.45']"
            outputs += _execute(ws, session["id"], code)
    finally:
        ws.close()
        lab.api("DELETE", f"/api/sessions/{session['id']}")
    images = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, f"the gate tree and gate curve figures: {[o['output_type'] for o in outputs]}"
    from PIL import Image

    for png in images:
        assert min(Image.open(io.BytesIO(base64.b64decode(png))).size) > 100
    summary = [o for o in outputs if "text/markdown" in o.get("data", {})]
    assert summary and "0.45" in summary[0]["data"]["text/markdown"], "the summary uses the tweaked bar"
    assert read_json(run / "gates.json")["threshold"] == 0.45, "the notebook wrote its outputs into the run"

    (tweak,) = read_json(run / "manifest.json")["tweaks"]
    assert tweak["stage"] == "03_gates" and tweak["via"] == "jupyter"
    assert tweak["notebook"].endswith("notebooks/03_gates.ipynb")
    assert tweak["changes"] == {"gates.threshold": [0.5, 0.45]} and not tweak["rendered_at"]
    page = (reports / "smoke" / "03_gates.html").read_text()
    assert "Tweaked:" in page and "not shown here" in page, "the old report says it predates the tweak"

    # the runner re-renders the tweaked notebook: same parameters, report says which tweak it shows
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lvmlib",
            "run",
            "--resume",
            str(run),
            "--only",
            "03_gates",
            "--reports-root",
            str(reports),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = read_json(run / "manifest.json")
    assert m["tweaks"][0]["rendered_at"] and m["stages"]["03_gates"]["tweak"] == tweak["at"]
    assert read_json(run / "gates.json")["threshold"] == 0.45
    page = (reports / "smoke" / "03_gates.html").read_text()
    assert "shown in this report" in page and "gates.threshold 0.5 → 0.45" in page
    assert "shown in the report" in (reports / "smoke" / "index.html").read_text()
