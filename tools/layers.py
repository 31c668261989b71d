"""Draw lvmlib's layers from its import graph into docs/DESIGN.md, or check that the drawing is current.

    python tools/layers.py            rewrite the picture between the markers in docs/DESIGN.md
    python tools/layers.py --check    exit 1 with one line when the picture differs from the code's imports
    python tools/layers.py --design PATH [--check]    the same on another copy of the document

The graph is grimp's (the library under import-linter), without imports guarded by `TYPE_CHECKING`.
Every module is collapsed to its top-level subpackage (`lvmlib.train.loop` -> `train`); an arrow goes
from importer to imported and its label is how many module -> module imports it stands for. The layers
and their order, top to bottom, are the import-linter `layers` contract in pyproject.toml, so the
picture and the contract cannot drift apart. Modules outside every layer (`lvmlib/__main__.py`) are
drawn above the top layer.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- layers:begin -->", "<!-- layers:end -->"


def read_layers(pyproject: Path) -> tuple[str, list[list[str]]]:
    """The root package and the `layers` contract's layers, top first, each a list of sibling packages."""
    cfg = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]
    root = cfg["root_package"]
    contract = next(c for c in cfg["contracts"] if c["type"] == "layers")
    layers = []
    for layer in contract["layers"]:
        names = [n.strip() for n in re.split(r"[|:]", layer)]
        layers.append([n.removeprefix(root + ".") for n in names])
    return root, layers


def package_edges(root: str) -> collections.Counter[tuple[str, str]]:
    """(importer, imported) top-level subpackage -> number of module -> module imports between them."""
    sys.path.insert(0, str(ROOT))  # this checkout's package, not an installed copy
    import grimp

    graph = grimp.build_graph(root, exclude_type_checking_imports=True)
    top = lambda module: module.split(".")[1] if "." in module else None
    edges: collections.Counter[tuple[str, str]] = collections.Counter()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            a, b = top(importer), top(imported)
            if a and b and a != b:
                edges[a, b] += 1
    return edges


def node_id(name: str) -> str:
    return name.strip("_") or "root"


def render(root: str, layers: list[list[str]], edges: collections.Counter[tuple[str, str]]) -> str:
    """The flowchart (a fenced block that GitHub draws) and its plain-text twin, as they stand between the markers."""
    layered = {name for layer in layers for name in layer}
    outside = sorted({name for edge in edges for name in edge} - layered)
    rows = ([outside] if outside else []) + layers
    order = {name: i for i, name in enumerate(name for row in rows for name in row)}  # top to bottom
    lines = ["```mermaid", "flowchart TB"]
    lines += [f'  {node_id(name)}["{root}.{name}"]' for name in order]
    for a, b in sorted(edges, key=lambda e: (order[e[0]], order[e[1]])):
        lines.append(f"  {node_id(a)} -->|{edges[a, b]}| {node_id(b)}")
    # Invisible links hold each layer on its own row even where no import crosses to the next one down.
    for upper, lower in zip(rows, rows[1:]):
        for name in upper:
            if not any((name, below) in edges for below in lower):
                lines.append(f"  {node_id(name)} ~~~ {node_id(lower[0])}")
    lines.append("```")
    lines += ["", "The same graph in text, top layer first (`package -> imported package (imports)`):", ""]
    for name in order:
        targets = sorted((b for a, b in edges if a == name), key=order.get)
        uses = ", ".join(f"`{b}` ({edges[name, b]})" for b in targets) or "nothing in lvmlib"
        lines.append(f"- `{name}` -> {uses}")
    return "\n".join(lines)


def splice(text: str, block: str) -> str | None:
    """`text` with `block` between the markers; None when the markers are missing."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return None
    return text[: start + len(BEGIN)] + "\n" + block + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the picture is not current")
    ap.add_argument("--design", type=Path, default=ROOT / "docs" / "DESIGN.md", help="the document to update")
    args = ap.parse_args(argv)
    shown = args.design.relative_to(ROOT) if args.design.is_relative_to(ROOT) else args.design
    root, layers = read_layers(ROOT / "pyproject.toml")
    block = render(root, layers, package_edges(root))
    text = args.design.read_text()
    new = splice(text, block)
    if new is None:
        print(f"{shown}: no {BEGIN} ... {END} markers to hold the layer picture", file=sys.stderr)
        return 1
    if args.check:
        if new != text:
            print(f"{shown}: the layer picture differs from lvmlib's imports: run tools/layers.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.design.write_text(new)
        print(f"{shown}: layer picture updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
