"""Reports checked as a person sees them: headless Chromium opens the smoke run's pages.

A real smoke run (`python -m lvmlib run params/smoke.yaml`) and a comparison of it are rendered once
per session; every page is then opened in Debian's `chromium` over the Chrome DevTools protocol
(`cdp.py`: a stdlib websocket client — no browser download, no extra package). Each page must load
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
import urllib.parse
from pathlib import Path

import pytest
from cdp import CDP, VIEW_H, VIEW_W

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.browser]


# --------------------------------------------------------------------------- the reports under test
@pytest.fixture(scope="session")
def reports(chromium, smoke_run) -> Path:
    """The session's smoke run (conftest) with its reports, and a comparison of it with a copy of itself."""
    from lvmlib.app.studies import compare_runs
    from lvmlib.report.pages import record_run

    tmp = smoke_run.parent.parent  # runs/ and reports/ of the session's smoke run
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
            out.append(
                f"JS exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails'].get('exception', {}).get('description', '')}"
            )
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
    missing = [
        h for h in browser.evaluate(LINKS_JS) if not Path(urllib.parse.unquote(urllib.parse.urlparse(h).path)).exists()
    ]
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
    assert 0 <= top < VIEW_H * 0.8 and right > left, (
        f"{page}: the summary starts at y={top:.0f}, below the first screen"
    )
    crop = shot.crop(
        (max(0, int(left)), int(top), min(VIEW_W, int(right)), min(VIEW_H, max(int(top) + 1, int(bottom))))
    )
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
    page.write_text(
        "<!doctype html><body><h2>Summary</h2><p>text</p>"
        "<img src='data:image/png;base64,AAAA'><img src='missing.png'>"
        "<script>undefined_function()</script></body>"
    )
    problems = _open(browser, page)
    assert any("JS exception" in p and "undefined_function" in p for p in problems), problems
    assert any("missing.png" in p for p in problems), problems
    images = browser.evaluate(IMAGES_JS)
    assert [i["w"] for i in images] == [0, 0]
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><body></body>")
    assert not _open(browser, blank)
    assert _ink(_screenshot(browser, "blank")) < 0.01
