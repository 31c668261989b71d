"""Reports checked as a person sees them: headless Chromium opens the smoke run's pages.

A real smoke run (`python -m lvmlib run params/smoke.yaml`) and a comparison of it are rendered once
per session; every page is then opened in Debian's `chromium` over the Chrome DevTools protocol
(a stdlib websocket client below — no browser download, no extra package). Each page must load
without a JavaScript error or a failed resource, every image must decode (naturalWidth > 0), the
summary must sit in the first screen of a screenshot that is not blank, local links must resolve,
and code must be hidden on the reading page and shown on its `.code.html` twin.

Without Chromium these tests skip, saying why; with LVM_REQUIRE_BROWSER=1 (CI) they fail instead.
LVM_CHROMIUM=/path/to/chrome picks another binary; LVM_SCREENSHOT_DIR=dir keeps the screenshots.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VIEW_W, VIEW_H = 1280, 900
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", f"--window-size={VIEW_W},{VIEW_H}"]
pytestmark = [pytest.mark.slow, pytest.mark.browser]


# --------------------------------------------------------------------------- Chrome DevTools protocol
class CDP:
    """Just enough of a websocket client (RFC 6455: masked text frames out, any frames in) for CDP."""

    def __init__(self, ws_url: str, timeout: float = 60):
        u = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self._exact(1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")
        self.next_id, self.events = 0, []

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the browser closed the websocket")
            buf += chunk
        return bytes(buf)

    def _send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
                                if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _recv(self) -> dict:
        parts = []
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            n = struct.unpack(">H", self._exact(2))[0] if n == 126 else struct.unpack(">Q", self._exact(8))[0] \
                if n == 127 else n
            payload = self._exact(n)
            if b0 & 0x0F == 8:
                raise ConnectionError("the browser closed the websocket")
            if b0 & 0x0F in (9, 10):  # ping / pong
                continue
            parts.append(payload)
            if b0 & 0x80:
                return json.loads(b"".join(parts))

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = self._recv()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            for i, e in enumerate(self.events):
                if e.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._recv())
        raise TimeoutError(f"no {method} within {timeout}s")

    def evaluate(self, js: str):
        r = self.call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")


def find_chromium() -> str | None:
    for cand in (os.environ.get("LVM_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        msg = ("headless Chromium not found (looked for $LVM_CHROMIUM, chromium, chromium-browser, google-chrome): "
               "install Debian's package with `apt-get install chromium` to check the reports in a browser")
        if os.environ.get("LVM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LVM_REQUIRE_BROWSER=1 but {msg}")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def browser(chromium, tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file, end = profile / "DevToolsActivePort", time.time() + 60
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if proc.poll() is not None or time.time() > end:
                pytest.fail(f"{chromium} did not start (exit code {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        cdp = CDP(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            cdp.call(f"{domain}.enable")
        cdp.call("Emulation.setDeviceMetricsOverride", width=VIEW_W, height=VIEW_H, deviceScaleFactor=1, mobile=False)
        yield cdp
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


# --------------------------------------------------------------------------- the reports under test
@pytest.fixture(scope="session")
def reports(chromium, tmp_path_factory) -> Path:
    """A real smoke run (about two minutes) and a comparison of it with a copy of itself."""
    from lvmlib.compare import compare_runs
    from lvmlib.runner import record_run
    tmp = tmp_path_factory.mktemp("smoke")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "lvmlib", "run", "params/smoke.yaml", "--run-id", "smoke",
                        "--runs-root", str(tmp / "runs"), "--reports-root", str(tmp / "reports"), "--quiet"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    twin = tmp / "runs" / "smoke-twin"  # same numbers under another id: a comparison of real files
    shutil.copytree(tmp / "runs" / "smoke", twin)
    manifest = json.loads((twin / "manifest.json").read_text())
    (twin / "manifest.json").write_text(json.dumps({**manifest, "run_id": "smoke-twin"}))
    shutil.copytree(tmp / "reports" / "smoke", tmp / "reports" / "smoke-twin")
    record_run(tmp / "reports", twin)
    compare_runs([tmp / "runs" / "smoke", twin], compare_id="pair", reports_root=tmp / "reports")
    return tmp / "reports"


STAGES = ("01_data", "02_train", "03_gates", "04_eval")
REPORTS = [f"smoke/{s}.html" for s in STAGES] + ["compare_pair.html"]
PAGES = ["index.html", "smoke/index.html"] + REPORTS + [p.replace(".html", ".code.html") for p in REPORTS]

# Where each kind of page keeps its summary: a notebook report's "Summary" heading with the cell after
# it, the run page's summary box, the index's table of runs.
SUMMARY_JS = """
(() => {
  const box = el => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const h = [...document.querySelectorAll('h1,h2,h3')].find(e => e.textContent.trim().startsWith('Summary'));
  if (h) {
    const cell = h.closest('.jp-Cell') || h, next = cell.nextElementSibling;
    const a = box(cell), b = next ? box(next) : a;
    return {found: 'heading', rect: [Math.min(a[0], b[0]), a[1], Math.max(a[2], b[2]), b[3]],
            text: (next ? next.innerText : '').slice(0, 300)};
  }
  const el = document.querySelector('.summary') || document.querySelector('table');
  return el ? {found: el.className || el.tagName, rect: box(el), text: el.innerText.slice(0, 300)} : null;
})()
"""
IMAGES_JS = "[...document.images].map(i => ({src: i.src.slice(0, 40), complete: i.complete, w: i.naturalWidth}))"
LINKS_JS = "[...document.querySelectorAll('a[href]')].map(a => a.href).filter(h => h.startsWith('file:'))"


def _problems(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            out.append(f"JS exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails'].get('exception', {}).get('description', '')}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append(f"{p['entry'].get('source')}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
    return out


def _open(browser: CDP, path: Path) -> list[str]:
    browser.events.clear()
    browser.call("Page.navigate", url=path.as_uri())
    browser.wait_event("Page.loadEventFired")
    browser.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")  # painted
    return _problems(browser.events)


def _screenshot(browser: CDP, name: str):
    from PIL import Image
    png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    if os.environ.get("LVM_SCREENSHOT_DIR"):
        out = Path(os.environ["LVM_SCREENSHOT_DIR"]) / (name.replace("/", "__") + ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(png)
    return Image.open(io.BytesIO(png)).convert("L")


def _ink(img) -> float:
    """Fraction of pixels that are not near-white."""
    hist = img.histogram()
    return sum(hist[:235]) / max(1, sum(hist))


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("page", PAGES)
def test_page_loads_cleanly_with_decoded_images_and_summary_first(page, reports, browser):
    path = reports / page
    assert path.is_file(), f"{page} was not rendered"
    problems = _open(browser, path)
    assert not problems, f"{page}: " + "; ".join(problems)
    images = browser.evaluate(IMAGES_JS)
    broken = [i for i in images if not i["complete"] or i["w"] == 0]
    assert not broken, f"{page}: {len(broken)} broken image(s): {broken[:3]}"
    if page in REPORTS:
        assert images, f"{page}: a report without a single figure"
    missing = [h for h in browser.evaluate(LINKS_JS)
               if not Path(urllib.parse.unquote(urllib.parse.urlparse(h).path)).exists()]
    assert not missing, f"{page}: links to missing files {missing[:3]}"
    shot = _screenshot(browser, page)
    assert shot.size == (VIEW_W, VIEW_H)
    assert _ink(shot) > 0.01 and len(shot.getcolors(VIEW_W * VIEW_H)) > 8, f"{page}: the first screen is blank"
    if page.endswith(".code.html"):
        return  # the code version keeps execution order: its summary comes where the notebook computes it
    summary = browser.evaluate(SUMMARY_JS)
    assert summary, f"{page}: no summary (a 'Summary' heading, the run summary box or the runs table)"
    if page in REPORTS:
        assert summary["found"] == "heading", f"{page}: a report needs a '## Summary' section"
    left, top, right, bottom = summary["rect"]
    assert 0 <= top < VIEW_H * 0.8 and right > left, f"{page}: the summary starts at y={top:.0f}, below the first screen"
    crop = shot.crop((max(0, int(left)), int(top), min(VIEW_W, int(right)), min(VIEW_H, max(int(top) + 1, int(bottom)))))
    assert _ink(crop) > 0.005, f"{page}: the summary area of the screenshot is blank"
    assert summary["text"].strip(), f"{page}: the summary has no text"


@pytest.mark.parametrize("report", REPORTS)
def test_code_hidden_on_the_reading_page_and_shown_beside_it(report, reports, browser):
    count = "document.querySelectorAll('.jp-CodeMirrorEditor, .highlight pre').length"
    assert not _open(browser, reports / report)
    assert browser.evaluate(count) == 0, f"{report}: code is visible on the reading page"
    assert browser.evaluate("[...document.querySelectorAll('.lvm-banner a')].some(a => a.textContent == 'show code')")
    assert not _open(browser, reports / report.replace(".html", ".code.html"))
    assert browser.evaluate(count) > 0, f"{report}: the code version shows no code"


def test_index_lists_the_run_and_the_comparison(reports, browser):
    assert not _open(browser, reports / "index.html")
    text = browser.evaluate("document.body.innerText")
    assert "smoke" in text and "succeeded" in text and "pair" in text and "comparison" in text
    rows = browser.evaluate("document.querySelectorAll('tr').length")
    assert rows == 1 + 3  # header, two runs, one comparison


def test_the_checks_catch_a_broken_page(browser, tmp_path):
    """The checker itself: a script error, a missing file and an undecodable image are all reported."""
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><body><h2>Summary</h2><p>text</p>"
                    "<img src='data:image/png;base64,AAAA'><img src='missing.png'>"
                    "<script>undefined_function()</script></body>")
    problems = _open(browser, page)
    assert any("JS exception" in p and "undefined_function" in p for p in problems), problems
    assert any("missing.png" in p for p in problems), problems
    images = browser.evaluate(IMAGES_JS)
    assert [i["w"] for i in images] == [0, 0]
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><body></body>")
    assert not _open(browser, blank)
    assert _ink(_screenshot(browser, "blank")) < 0.01
