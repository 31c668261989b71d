"""Write a notebook from a compact cell list (used to author notebooks/*.ipynb; outputs never committed).

Usage from Python: `write_notebook(path, [("md", text), ("params", code), ("code", code), ...])`.
Also `python tools/nbtool.py --strip notebooks/*.ipynb` removes outputs before committing.
"""

from __future__ import annotations

import sys

import nbformat

KERNELSPEC = {"name": "lvm-study", "display_name": "lvm-study (.venv)", "language": "python"}


def write_notebook(path: str, cells: list[tuple[str, str]]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            cell = nbformat.v4.new_code_cell(src)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, c in enumerate(nb.cells):
        c["id"] = f"c{i:02d}"
    nbformat.validate(nb)
    nbformat.write(nb, path)


def strip(path: str) -> None:
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nbformat.write(nb, path)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--strip"]:
        for p in sys.argv[2:]:
            strip(p)
