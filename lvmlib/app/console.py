"""What `python -m lvmlib run` prints: one line per stage, at most one live progress line, a summary.

The notebooks execute in a kernel, so their progress bars (`runs.progress_bar`, i.e. tqdm) and prints
reach the runner as stream text, which the notebook executor (`lvmlib.app.execute`) hands to `Console.sink()`. The console keeps the
latest progress frame (the text after tqdm's last carriage return) as the single live line of a
terminal and drops the rest; the notebooks keep everything in their outputs, so the reports lose
nothing. Levels:

- `quiet`: the three-line summary only (errors still reach stderr);
- `normal`: a header, one line per stage (name, status, seconds), the summary; on a terminal one
  live line shows the running stage's progress bar (embedding chunks/s, training epoch/step/loss);
- `verbose`: as normal, plus every line the notebooks print (training log, evaluation steps).

A line a notebook prints starting with `[lvm-study] warning:` (`WARNING`: a cache shard moved aside, a
resume that fell back on last.prev.pt) is shown at every level, quiet included.

Under `CI` (any value but "" / "0" / "false"), `TERM=dumb` or when stdout is not a terminal there is
no live line: plain lines only, each stage's line written when it starts and finished when it ends.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from typing import Any, TextIO

from lvmlib.report.words import _num, _pct, beaten_text, has_interval

LEVELS = ("quiet", "normal", "verbose")
NAME_W = 10
WARNING = "[lvm-study] warning:"  # kernel lines the user sees at every level


def interactive(stream: TextIO) -> bool:
    """True when a live (carriage-return) line can be drawn on `stream`."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def summary_lines(head: dict[str, Any], index_html: str) -> list[str]:
    """Three lines: the gate decision, the model's R@5 and cosine beside the best baseline, the index.

    `head` is `runner.headline(run_dir)` (missing numbers show as '—')."""
    gate = head.get("gate_decision") or "—"
    v, ep = head.get("gate_val_cosine"), head.get("gate_epoch") or 2
    gate_txt = f"{gate} (epoch-{ep} val cosine {_num(v)})" if v is not None else f"{gate} (epoch {ep} not reached)"
    if head.get("gate_decision") is None:
        gate_txt = "— (no gates.json: 03_gates did not run)"
    ci = head.get("recall_at_5_ci")
    ci_txt = f" [{ci[0]:.1%}–{ci[1]:.1%}]" if has_interval(ci) else ""
    if head.get("recall_at_5") is None:
        model = "— (no metrics/eval.json: 04_eval did not run)"
    else:
        model = f"R@5 {_pct(head.get('recall_at_5'))}{ci_txt}, cosine {_num(head.get('pred_target_cosine'))}"
        if head.get("best_baseline"):
            model += (
                f"  vs best baseline {head['best_baseline']}: R@5 {_pct(head.get('best_baseline_r5'))}, "
                f"cosine {_num(head.get('best_baseline_cosine'))} ({beaten_text(head)})"
            )
    return [f"gate     {gate_txt}", f"model    {model}", f"reports  {index_html}"]


class Console:
    """Terminal output of one study run (see the module docstring)."""

    def __init__(self, level: str = "normal", stream: TextIO | None = None, live: bool | None = None):
        if level not in LEVELS:
            raise ValueError(f"console level {level!r}: expected one of {LEVELS}")
        self.level = level
        self.out = stream or sys.stdout
        self.live = interactive(self.out) if live is None else live
        self.stage: str | None = None
        self.t0 = 0.0
        self.frame = ""  # the latest progress frame of the running stage
        self.pending = ""  # text of the current, unfinished kernel line
        self.drawn = False  # a live line is on screen
        self.open_line = False  # a plain stage line was started and not finished

    # ------------------------------------------------------------------ drawing
    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _clear(self) -> None:
        if self.drawn:
            self._write("\r\x1b[2K")
            self.drawn = False

    def _draw(self) -> None:
        if not (self.live and self.stage and self.level != "quiet"):
            return
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        head = f"  {self.stage:<{NAME_W}} running {time.time() - self.t0:5.0f} s  "
        self._write("\r\x1b[2K" + head + fit(self.frame, width - len(head)))
        self.drawn = True

    def line(self, text: str) -> None:
        """A finished line (above the live line, which is redrawn under it)."""
        if self.level == "quiet":
            return
        self._clear()
        if self.open_line:
            self._write("\n")
            self.open_line = False
        self._write(text + "\n")
        self._draw()

    def warn(self, text: str) -> None:
        """A warning line: like `line`, at every level."""
        self._clear()
        if self.open_line:
            self._write("\n")
            self.open_line = False
        self._write(text + "\n")
        self._draw()

    # ------------------------------------------------------------------ the run
    def header(self, run_id: str, run_dir: str) -> None:
        self.line(f"lvm-study run {run_id} → {run_dir}")

    def stage_start(self, name: str) -> None:
        self.stage, self.t0, self.frame, self.pending = name, time.time(), "", ""
        if self.level == "quiet":
            return
        if self.level == "verbose":
            self.line(f"── {name}")
        elif self.live:
            self._draw()
        else:
            self._write(f"  {name:<{NAME_W}} ")
            self.open_line = True

    def stage_end(self, name: str, status: str, seconds: float) -> None:
        self.stage = None
        if self.level == "quiet":
            return
        self._clear()
        tail = f"{status:<10} {seconds:6.1f} s"
        if self.open_line:
            self._write(tail + "\n")
            self.open_line = False
        else:
            self._write(f"  {name:<{NAME_W}} {tail}\n")

    def skipped(self, name: str, why: str = "done earlier") -> None:
        self.line(f"  {name:<{NAME_W}} skipped    ({why})")

    def summary(self, head: dict[str, Any], index_html: str) -> None:
        self._clear()
        if self.open_line:
            self._write("\n")
            self.open_line = False
        self._write("".join(s + "\n" for s in summary_lines(head, index_html)))

    # ------------------------------------------------------------------ kernel streams
    def feed(self, text: str) -> None:
        """Stream text from the kernel: progress frames become the live line, lines show in verbose."""
        for part in _split_keep(text):
            if part == "\n":
                done, self.pending = self.pending, ""
                if done.strip().startswith(WARNING):
                    self.warn(done.strip())
                elif self.level == "verbose" and done.strip():
                    self.line(done.strip())
                self.frame = ""  # a bar that keeps its last frame ends it with a newline
            elif part == "\r":
                if self.pending:  # a frame ends here; blanks = a bar that cleared itself
                    self.frame = self.pending.strip()
                self.pending = ""
            else:
                self.pending += part
        if "\r" in text and self.pending.strip():
            self.frame = self.pending.strip()  # tqdm writes '\r' + frame, the next return comes later
        self._draw()

    def sink(self) -> _Sink:
        """A file-like object for the executor's stdout_file / stderr_file (`execute.execute_notebook`)."""
        return _Sink(self)


class _Sink:
    def __init__(self, console: Console):
        self.console = console

    def write(self, text: str) -> int:
        self.console.feed(text)
        return len(text)

    def flush(self) -> None:
        pass


_BAR = re.compile(r"\|[^|]*\|\s*")


def fit(frame: str, width: int) -> str:
    """A tqdm frame in `width` columns: without its bar graphic when too wide, then cut with '…'."""
    if len(frame) > width:
        frame = _BAR.sub(" ", frame, count=1)
    return frame if len(frame) <= width else frame[: max(0, width - 1)] + "…"


def _split_keep(text: str) -> list[str]:
    """'a\rb\nc' -> ['a', '\r', 'b', '\n', 'c'] (carriage returns and newlines as their own items)."""
    out, cur = [], []
    for ch in text.replace("\r\n", "\n"):
        if ch in "\r\n":
            if cur:
                out.append("".join(cur))
                cur = []
            out.append(ch)
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out
