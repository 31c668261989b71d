"""lvmlib's shape: the import contracts hold, DESIGN.md's layer picture is current, every module says its job.

Each check is also shown failing: on a tampered copy of the package, of the document, on a bad module."""

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS_TOOL = ROOT / "tools" / "layers.py"
MODULES = sorted(ROOT.glob("lvmlib/**/*.py"))


def contract_names() -> list[str]:
    return [
        c["name"] for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    ]


def lint_imports(cwd: Path, package_parent: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the contracts of `cwd`/pyproject.toml, importing lvmlib from `package_parent`."""
    exe = Path(sys.executable).with_name("lint-imports")
    exe = str(exe) if exe.exists() else shutil.which("lint-imports")
    assert exe, "lint-imports is not installed (import-linter is pinned in requirements.lock)"
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([exe], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def contract_states(output: str) -> dict[str, str]:
    """{contract name: KEPT | BROKEN} from lint-imports' report."""
    return {
        name: m.group(1) for name in contract_names() if (m := re.search(re.escape(name) + r" (KEPT|BROKEN)", output))
    }


def layers_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(LAYERS_TOOL), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def docstring_problem(path: Path) -> str | None:
    """Why `path` does not open with a one-line docstring stating its job; None when it does.

    The first line of the module docstring must be one sentence (ending in a full stop) of at most 120
    characters, standing alone: the docstring ends there or a blank line follows it."""
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path)), clean=False)
    if doc is None:
        return "no module docstring"
    lines = doc.split("\n")
    first = lines[0].strip()
    if not first:
        return "the docstring's first line is empty (the summary belongs right after the opening quotes)"
    if len(first) > 120:
        return f"first line is {len(first)} characters (at most 120)"
    if len(lines) > 1 and lines[1].strip():
        return "first line runs on into the next one (one summary line, then a blank line)"
    if not first.endswith("."):
        return "first line is not a sentence ending in a full stop"
    if re.search(r"[.!?][\"')\]]?\s+[A-Z`]", first):
        return "first line holds more than one sentence"
    return None


# -- the contracts ---------------------------------------------------------------------------------


def test_import_contracts_are_kept():
    r = lint_imports(ROOT, ROOT)
    out = r.stdout + r.stderr
    assert contract_states(out) == dict.fromkeys(contract_names(), "KEPT"), out
    assert r.returncode == 0, out


UPWARD = ("lvmlib/core/paths.py", "import lvmlib.app.cli  # core reaching up to app\n", "BROKEN", "BROKEN")
SIBLING_CYCLE = ("lvmlib/core/errors.py", "import lvmlib.core.runs  # runs imports errors\n", "KEPT", "BROKEN")


@pytest.mark.parametrize(("module", "line", "layers", "acyclic"), [UPWARD, SIBLING_CYCLE], ids=["upward", "cycle"])
def test_import_contracts_catch_a_bad_import(tmp_path, module, line, layers, acyclic):
    shutil.copytree(ROOT / "lvmlib", tmp_path / "lvmlib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / module, "a") as f:
        f.write(line)
    r = lint_imports(tmp_path, tmp_path)
    out = r.stdout + r.stderr
    assert contract_states(out) == dict(zip(contract_names(), [layers, acyclic])), out
    assert r.returncode == 1, out


# -- the picture in docs/DESIGN.md ---------------------------------------------------------------------


def test_design_picture_is_current():
    r = layers_check("--check")
    assert r.returncode == 0, r.stderr + r.stdout


def test_design_picture_names_every_package_and_its_imports():
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    block = text[text.index("<!-- layers:begin -->") : text.index("<!-- layers:end -->")]
    assert "```mermaid\nflowchart TB\n" in block
    packages = sorted(p.parent.name for p in ROOT.glob("lvmlib/*/__init__.py")) + ["metrics"]
    for name in packages:
        assert f'["lvmlib.{name}"]' in block, name
    assert re.search(r"^  metrics -->\|\d+\| core$", block, re.M)  # lvmlib/metrics.py imports core
    assert "  core -->" not in block  # the bottom layer imports nothing of lvmlib


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: re.sub(r"-->\|(\d+)\|", lambda m: f"-->|{int(m[1]) + 1}|", t, count=1),  # a count
        lambda t: re.sub(r"^  \w+ -->\|\d+\| \w+\n", "", t, count=1, flags=re.M),  # an arrow
        lambda t: t.replace("- `core` -> nothing in lvmlib", "- `core` -> `app` (1)"),  # the text twin
    ],
    ids=["count", "arrow", "text"],
)
def test_design_picture_check_fails_on_a_stale_picture_and_the_tool_redraws_it(tmp_path, tamper):
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    design = tmp_path / "DESIGN.md"
    design.write_text(tamper(text))
    assert design.read_text() != text, "the tampering changed nothing"
    r = layers_check("--check", "--design", str(design))
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "differs" in r.stderr, r.stderr
    assert layers_check("--design", str(design)).returncode == 0
    assert design.read_text() == text, "redrawn, the copy equals the current document"
    assert layers_check("--check", "--design", str(design)).returncode == 0


def test_design_picture_check_fails_without_markers(tmp_path):
    design = tmp_path / "DESIGN.md"
    design.write_text((ROOT / "docs" / "DESIGN.md").read_text().replace("<!-- layers:end -->", ""))
    r = layers_check("--check", "--design", str(design))
    assert r.returncode == 1 and "markers" in r.stderr, r.stderr


# -- module docstrings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(ROOT)) for p in MODULES])
def test_module_opens_with_a_one_line_docstring_of_its_job(path):
    assert docstring_problem(path) is None, f"{path.relative_to(ROOT)}: {docstring_problem(path)}"


def test_every_module_is_checked():
    assert len(MODULES) > 40 and ROOT / "lvmlib" / "train" / "__main__.py" in MODULES


GOOD = '"""Run directories, manifests and crash-safe writes.\n\nMore on how, below.\n"""\nX = 1\n'
BAD = {
    "none": "import os\n",
    "comment only": "# Run directories.\nimport os\n",
    "runs on": '"""The scaling study: one run per training-set size, the same held-out\narticles."""\n',
    "too long": '"""' + "A very long line about what this module does, " * 3 + 'really."""\n',
    "two sentences": '"""Run directories. Manifests and crash-safe writes."""\n',
    "no full stop": '"""Run directories, manifests and crash-safe writes"""\n',
    "blank first line": '"""\nRun directories, manifests and crash-safe writes.\n"""\n',
}


def test_docstring_check_accepts_a_good_module(tmp_path):
    (tmp_path / "good.py").write_text(GOOD)
    assert docstring_problem(tmp_path / "good.py") is None


@pytest.mark.parametrize("source", list(BAD.values()), ids=list(BAD))
def test_docstring_check_rejects_a_bad_module(tmp_path, source):
    (tmp_path / "bad.py").write_text(source)
    assert docstring_problem(tmp_path / "bad.py") is not None
