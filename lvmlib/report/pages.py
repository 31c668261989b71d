"""The HTML the kit writes: rendered notebooks, each run's page and run record, and the index.

The HTML the kit writes: rendered notebooks (nbconvert, with a top bar), each run's page and run record
(`reports/<run_id>/run.json`, built from `headline`), and `reports/index.html`.

Pages come from Jinja2 templates in `lvmlib/templates/` with autoescaping on: every value from a run
(ids, params names, failure lines, verdicts) is escaped unless it is HTML the kit built itself
(`Markup`). `headline(run_dir)` is the one place a run's key numbers are read from its files; the run
page, the index and the terminal summary (`console.summary_lines`) all show it.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from filelock import FileLock
from markupsafe import Markup, escape

from lvmlib.core.digests import human_size
from lvmlib.core.errors import IntegrityError, RunError
from lvmlib.core.paths import NOTEBOOKS
from lvmlib.core.runs import atomic_write_json, atomic_write_text, read_json, verify_run
from lvmlib.report import tweaks
from lvmlib.report.words import beaten_text, has_interval
from lvmlib.train.gates import upgrade

TEMPLATES = Path(__file__).resolve().parent / "templates"


@functools.cache
def _env():
    from jinja2 import Environment, FileSystemLoader  # installed with nbconvert

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters.update(fmt=_fmt, secs=_secs, when=_when)
    env.globals.update(status_class=lambda st: _STATUS_CLASS.get(st, ""), r5=_r5, baseline=_baseline)
    return env


def _template(name: str):
    return _env().get_template(name)


# --------------------------------------------------------------------------- rendered notebooks
_CR = re.compile(r"[^\n]*\r(?=[^\n])")  # text a later carriage return overwrote (progress bars)
BANNER_CSS = (
    "position:sticky;top:0;z-index:10;font:13px system-ui,sans-serif;padding:7px 14px;"
    "background:#f3f4f6;border-bottom:1px solid #d1d5db"
)
REPORT_CSS = (
    "<style>.lvm-banner a{color:#1d4ed8;text-decoration:none;margin-right:2px}"
    ".lvm-banner a:hover{text-decoration:underline}.lvm-banner .lvm-note{color:#6b7280;float:right}"
    ".jp-OutputArea-output img{max-width:100%;height:auto}"
    ".jp-RenderedHTMLCommon table{font-size:12.5px}"
    ".jp-OutputArea-output{overflow-x:auto}</style>"
)
# nbconvert's lab template minus the require.js and MathJax <script>s it fetches from a CDN: the reports
# need neither (no widgets, no TeX) and must open offline without errors.
OFFLINE_TEMPLATE = (
    "{%- extends 'index.html.j2' -%}"
    "{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}"
    "{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}"
)


def tidy_streams(nb) -> None:
    """Merge consecutive stdout/stderr chunks, keep what a terminal would show after carriage returns
    (a progress bar's final state, or nothing when it cleared itself), and drop blank stream outputs."""
    for cell in nb.cells:
        outputs, merged = cell.get("outputs", []), []
        for out in outputs:
            if (
                out.output_type == "stream"
                and merged
                and merged[-1].output_type == "stream"
                and merged[-1].name == out.name
            ):
                merged[-1].text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                out.text = _CR.sub("", out.text.replace("\r\n", "\n"))
                out.text = "\n".join(line.rstrip() for line in out.text.replace("\r", "").split("\n"))
        if outputs:
            cell.outputs = [o for o in merged if o.output_type != "stream" or o.text.strip()]


def summary_first(nb) -> bool:
    """Reading order: move the `## Summary` section (a markdown cell starting with that heading, or cells
    tagged `summary`, up to the next `## ` heading) right after the title cell. True if anything moved."""
    cells = nb.cells
    start = next(
        (
            i
            for i, c in enumerate(cells)
            if "summary" in c.metadata.get("tags", [])
            or (c.cell_type == "markdown" and c.source.lstrip().lower().startswith("## summary"))
        ),
        None,
    )
    first_output = next((i for i, c in enumerate(cells) if c.cell_type == "code" and c.get("outputs")), len(cells))
    if start is None or start < first_output or start == 0:
        return False  # no summary, or nothing with output comes before it
    end = start + 1
    while (
        end < len(cells)
        and not (cells[end].cell_type == "markdown" and cells[end].source.lstrip().startswith("## "))
        and "summary" not in cells[end].metadata.get("tags", [])
    ):
        end += 1
    while end < len(cells) and "summary" in cells[end].metadata.get("tags", []):
        end += 1
    block = cells[start:end]
    if not any(c.cell_type == "code" and c.get("outputs") for c in block):
        return False  # the summary never ran (a failed notebook): keep the order execution left
    nb.cells = cells[:1] + block + cells[1:start] + cells[end:]
    return True


def render_html(
    ipynb: Path, out_html: Path, nav: list[tuple[str, str]] | None = None, tweak_note: str = ""
) -> list[Path]:
    """Two renderings: `<name>.html` with code hidden (for reading: the summary section first, progress
    bars collapsed) and `<name>.code.html` with code, in execution order.

    `nav`: (label, href) links for the top bar; default: this run's page and the index of all runs.
    `tweak_note`: HTML shown under the banner on both pages (the tweaks of this stage, `tweaks.report_note`).
    """
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nav = nav if nav is not None else [("run", "index.html"), ("all runs", "../index.html")]
    written = []
    for exclude_input, path in ((True, out_html), (False, out_html.with_suffix(".code.html"))):
        nb = nbformat.read(str(ipynb), as_version=4)
        tidy_streams(nb)
        moved = summary_first(nb) if exclude_input else False
        exporter = HTMLExporter(
            exclude_input=exclude_input,
            exclude_input_prompt=True,
            exclude_output_prompt=True,
            extra_loaders=[DictLoader({"lvm_report.html.j2": OFFLINE_TEMPLATE})],
            template_file="lvm_report.html.j2",
        )
        body, _ = exporter.from_notebook_node(nb)
        other = path.name.replace(".code.html", ".html") if not exclude_input else path.with_suffix(".code.html").name
        label = "hide code" if not exclude_input else "show code"
        note = (
            "summary shown first · code hidden"
            if moved
            else ("code hidden" if exclude_input else "code shown, in execution order")
        )
        banner = _template("banner.html.j2").render(
            css=Markup(BANNER_CSS), nav=nav, other=other, label=label, note=note
        )
        body = body.replace("</head>", REPORT_CSS + "</head>", 1)
        idx = body.find(">", body.find("<body")) + 1
        body = body[:idx] + banner + tweak_note + body[idx:]
        atomic_write_text(path, body)
        written.append(path)
    return written


# --------------------------------------------------------------------------- run record, run page, index
def headline(run_dir: Path) -> dict[str, Any]:
    """Key numbers of a run for the index (missing files simply give no number)."""
    out: dict[str, Any] = {}
    for name, path in (("gates", run_dir / "gates.json"), ("eval", run_dir / "metrics" / "eval.json")):
        try:
            out[name] = read_json(path)
        except (RunError, IntegrityError):  # missing, or changed since written (the run page names it)
            out[name] = None
    g, e = upgrade(out["gates"]) or {}, out["eval"] or {}
    best = (e.get("gates") or {}).get("best_baseline") or {}
    return {
        "gate_epoch": g.get("gate_epoch"),
        "gate_val_cosine": g.get("gate_val_cosine"),
        "gate_decision": g.get("decision"),
        "gate_reason": g.get("reason"),
        "epochs_trained": g.get("epochs_trained"),
        "recall_at_5": e.get("recall_at_5"),
        "recall_at_5_ci": e.get("recall_at_5_ci"),
        "mrr": e.get("mrr"),
        "pred_target_cosine": e.get("pred_target_cosine"),
        "n_queries": e.get("n_queries"),
        "phase1_decision": e.get("decision"),
        "phase1_reason": (e.get("gates") or {}).get("reason"),
        "primary_description": e.get("primary_description"),
        "baseline_copy_last_r5": (e.get("baseline_copy_last") or {}).get("recall_at_5"),
        "best_baseline": best.get("name"),
        "best_baseline_r5": best.get("recall_at_5"),
        "best_baseline_cosine": best.get("pred_target_cosine"),
        "best_baseline_diff_r5": best.get("diff_recall_at_5"),
        "best_baseline_diff_r5_ci": best.get("diff_recall_at_5_ci"),
        "best_baseline_diff_cosine": best.get("diff_cosine"),
        "best_baseline_diff_cosine_ci": best.get("diff_cosine_ci"),
        "beats_best_baseline": e.get("beats_best_baseline"),
    }


def integrity(run_dir: Path) -> dict[str, Any] | None:
    """The run's files against their recorded digests, now: {"text", "bad"} for the run page; None for a
    run made before digests."""
    report = verify_run(run_dir)
    if report is None:
        return None
    n, size = len(report["intact"]), human_size(sum(report["intact"].values()))
    if not report["bad"]:
        return {"text": f"{n} file{'s' * (n != 1)} verified ({size})", "bad": []}
    bad = [f"{rel}: {why}" for rel, why in report["bad"].items()]
    return {"text": f"{len(bad)} file(s) changed or missing since written, {n} verified", "bad": bad}


def record_run(reports_root: Path, run_dir: Path) -> None:
    """Write reports/<run_id>/run.json from the run's manifest and metrics, then rebuild the index."""
    manifest = read_json(run_dir / "manifest.json")
    rec = {
        k: manifest.get(k)
        for k in (
            "run_id",
            "params_name",
            "params_path",
            "overrides",
            "status",
            "started_at",
            "ended_at",
            "failure",
            "git_sha",
            "git_dirty",
        )
    }
    rec["run_dir"] = str(run_dir)
    rec["kind"] = "run"
    rec["stages"] = manifest.get("stages", {})
    rec["tweaks"] = manifest.get("tweaks", [])
    rec.update(headline(run_dir))
    rec["run_id"] = run_dir.name  # reports are keyed by the run folder (a copied run is a new run)
    rec["integrity"] = integrity(run_dir)
    atomic_write_json(reports_root / rec["run_id"] / "run.json", rec)
    write_run_page(reports_root, rec)
    write_index(reports_root)


PAGE_CSS = (
    "body{font:15px/1.45 system-ui,sans-serif;color:#111;max-width:1200px;margin:1.5em auto;padding:0 1em}"
    "a{color:#1d4ed8}table{border-collapse:collapse}td,th{border-bottom:1px solid #e5e7eb;"
    "padding:6px 10px;text-align:left;vertical-align:top}th{background:#f3f4f6;font-weight:600}"
    "small{color:#4b5563}.ok{color:#15803d}.bad{color:#b91c1c}.run{color:#b45309}"
    ".card{display:inline-block;border:1px solid #e5e7eb;border-radius:8px;padding:8px 14px;margin:4px 8px 4px 0;"
    "min-width:120px}.card b{display:block;font-size:20px}.cmp td{background:#eff6ff}"
    ".summary{background:#f9fafb;border-left:4px solid #1d4ed8;padding:10px 14px;margin:1em 0}"
)
_STATUS_CLASS = {"succeeded": "ok", "failed": "bad", "running": "run", "interrupted": "run"}


_STATUS_CLASS = {"succeeded": "ok", "failed": "bad", "running": "run", "interrupted": "run"}


def _fmt(v: Any, pct: bool = False) -> str:
    """A number, yes/no or text for a table cell (plain text: the template escapes it)."""
    if v is None or (not isinstance(v, (str, int, float, bool)) and not v):  # None, or a template's Undefined
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.1%}" if pct else f"{v:.3f}"
    return str(v)


def _secs(v: Any) -> str:
    return "—" if not isinstance(v, (int, float)) else f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min"


def _when(iso: str | None) -> str:
    """'2026-01-31T14:05:09+01:00' -> '2026-01-31 14:05' (the full stamp stays in run.json)."""
    return iso[:16].replace("T", " ") if isinstance(iso, str) and iso else "—"


def _r5(rec: dict[str, Any]) -> Markup:
    ci = rec.get("recall_at_5_ci")
    txt = escape(_fmt(rec.get("recall_at_5"), True))
    if has_interval(ci):
        txt += Markup(f" <small>[{ci[0]:.1%}–{ci[1]:.1%}]</small>")
    return Markup(txt)


def _baseline(rec: dict[str, Any]) -> str:
    if rec.get("best_baseline"):
        return f"best baseline ({rec['best_baseline']}) {_fmt(rec.get('best_baseline_r5'), True)}"
    return f"copy-last {_fmt(rec.get('baseline_copy_last_r5'), True)}"


def _records(reports_root: Path, pattern: str) -> list[dict[str, Any]]:
    """Parse every JSON record under reports_root matching pattern; unreadable ones are skipped."""
    out = []
    for p in reports_root.glob(pattern):
        try:
            out.append(upgrade(json.loads(p.read_text())))  # a run.json of an older kit: today's names
        except (OSError, json.JSONDecodeError):
            continue
    return out


def write_run_page(reports_root: Path, rec: dict[str, Any]) -> None:
    """reports/<run_id>/index.html: summary numbers first, then the stage reports and comparisons."""
    cards = [
        (
            f"epoch-{rec.get('gate_epoch') or 2} val cosine",
            _fmt(rec.get("gate_val_cosine")),
            f"gate: {_fmt(rec.get('gate_decision'))}",
        ),
        ("R@5", _r5(rec), _baseline(rec)),
        ("cosine", _fmt(rec.get("pred_target_cosine")), f"{_fmt(rec.get('n_queries'))} queries"),
        ("Phase 1", _fmt(rec.get("phase1_decision")), f"best baseline: {beaten_text(rec)}"),
    ]
    compared = [
        c
        for c in _records(reports_root, "compare_*.json")
        if any(r.get("run_id") == rec["run_id"] for r in c.get("runs", []))
    ]
    sha = str(rec.get("git_sha") or "")[:10] + (" (dirty)" if rec.get("git_dirty") else "")
    page = _template("run_page.html.j2").render(
        rec=rec,
        css=Markup(PAGE_CSS),
        cards=cards,
        notebooks=NOTEBOOKS,
        sha=sha,
        reasons=[rec[k] for k in ("gate_reason", "phase1_reason") if rec.get(k)],
        tweaked={t.get("stage") for t in rec.get("tweaks") or []},
        tweaks_section=Markup(tweaks.run_page_section(rec)),
        compared=compared,
    )
    atomic_write_text(reports_root / rec["run_id"] / "index.html", page)


def write_index(reports_root: Path) -> Path:
    """reports/index.html: every run and comparison, newest first; readable with no server."""
    reports_root = Path(reports_root)
    reports_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(reports_root / ".index.lock")):
        recs = (
            _records(reports_root, "*/run.json")
            + _records(reports_root, "compare_*.json")
            + _records(reports_root, "scaling_*.json")
            + _records(reports_root, "confirm_*.json")
        )
        recs.sort(key=lambda r: r.get("started_at") or "", reverse=True)
        n_runs = sum(r.get("kind") not in ("compare", "scaling", "confirm") for r in recs)

        def stage_links(r: dict[str, Any]) -> Markup:
            return Markup(" ").join(
                Markup("<a href='{}/{}.html'>{}</a>").format(r["run_id"], n, n[:2])
                for n in NOTEBOOKS
                if (reports_root / r["run_id"] / f"{n}.html").is_file()
            )

        page = _template("runs_index.html.j2").render(
            css=Markup(PAGE_CSS), recs=recs, n_runs=n_runs, n_other=len(recs) - n_runs, stage_links=stage_links
        )
        out = reports_root / "index.html"
        atomic_write_text(out, page)
    return out
