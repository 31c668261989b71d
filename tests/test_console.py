"""The terminal output of a run: one line per stage, one live progress line, a three-line summary."""

import io
from pathlib import Path

import pytest

from lvmlib.app.console import Console, fit, interactive, summary_lines

HEAD = {
    "gate_decision": "stop_option_4",
    "gate_val_cosine": 0.3231,
    "recall_at_5": 0.056,
    "recall_at_5_ci": [0.033, 0.088],
    "pred_target_cosine": 0.306,
    "best_baseline": "copy_last",
    "best_baseline_r5": 0.251,
    "best_baseline_cosine": 0.416,
    "beats_best_baseline": False,
}

# What a kernel sends while 01_data embeds and 02_train trains: tqdm frames after carriage returns,
# a bar that clears itself (leave=False), log lines with newlines.
EMBED = [
    "\rembedding (minilm):   0%|          | 0/900 [00:00<?, ?chunk/s]",
    "\rembedding (minilm):  50%|#####     | 450/900 [00:05<00:05, 90.1chunk/s]",
    "\rembedding (minilm): 100%|##########| 900/900 [00:10<00:00, 90.0chunk/s]\n",
]
TRAIN = [
    "start pid 1 on host; mamba 1,234 params\n",
    "\repoch 1/3:  10%|#         | 5/50 [00:01<00:09, 5.0it/s, loss=4.1234]",
    "\repoch 1/3:  90%|######### | 45/50 [00:09<00:01, 5.0it/s, loss=3.2000]",
    "\r                                                                      \r",
    "epoch 1: train_loss 3.1 val_cosine 0.2\n",
]


def _run(console: Console) -> str:
    console.header("r1", "runs/r1")
    for name, chunks in (("01_data", EMBED), ("02_train", TRAIN)):
        console.stage_start(name)
        for c in chunks:
            console.sink().write(c)
        console.stage_end(name, "succeeded", 12.3)
    console.summary(HEAD, "reports/index.html")
    return console.out.getvalue()


def test_plain_output_is_one_line_per_stage_and_the_summary():
    out = _run(Console("normal", io.StringIO(), live=False))
    assert "\r" not in out and "\x1b" not in out, "no live line without a terminal"
    lines = out.splitlines()
    assert lines[0] == "lvm-study run r1 → runs/r1"
    assert lines[1].split() == ["01_data", "succeeded", "12.3", "s"]
    assert lines[2].split() == ["02_train", "succeeded", "12.3", "s"]
    assert lines[3:] == summary_lines(HEAD, "reports/index.html") and len(lines) == 6


def test_live_output_keeps_one_progress_line_and_shows_the_latest_frame(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = _run(Console("normal", io.StringIO(), live=True))
    finished = out.split("\n")
    # every newline ends a stage line, the header or the summary: progress frames never add lines
    assert len(finished) - 1 == 1 + 2 + 3
    assert "90.1chunk/s" in out and "loss=3.2000" in out, "the live line shows the embedding and training bars"
    assert "start pid" not in out and "train_loss 3.1" not in out, "log lines are for --verbose"
    # the last frame drawn before a stage ends is cleared, so the stage's line starts clean
    before_train_line = out[: out.index("  02_train   succeeded")]
    assert before_train_line.endswith("\r\x1b[2K")


def test_a_frame_fits_a_narrow_terminal():
    frame = "embedding (minilm):  50%|#####     | 450/900 [00:05<00:05, 90.1chunk/s]"
    assert fit(frame, 200) == frame
    assert fit(frame, 60) == "embedding (minilm):  50% 450/900 [00:05<00:05, 90.1chunk/s]"
    assert fit(frame, 30) == "embedding (minilm):  50% 450/…" and len(fit(frame, 30)) == 30


def test_verbose_adds_the_notebooks_lines():
    out = _run(Console("verbose", io.StringIO(), live=False))
    assert "start pid 1 on host" in out and "epoch 1: train_loss 3.1" in out
    assert "100%|##########| 900/900" in out, "a bar's final frame is a line of its own"
    assert "50%|#####" not in out, "intermediate frames are not lines"


def test_quiet_prints_only_the_summary():
    out = _run(Console("quiet", io.StringIO(), live=True))
    assert out.splitlines() == summary_lines(HEAD, "reports/index.html")


def test_summary_names_gate_model_baseline_and_index():
    gate, model, where = summary_lines(HEAD, "reports/index.html")
    assert "stop_option_4" in gate and "0.323" in gate
    assert "R@5 5.6% [3.3%–8.8%]" in model and "cosine 0.306" in model
    assert "copy_last" in model and "25.1%" in model and "0.416" in model and "not beaten" in model
    assert where.endswith("reports/index.html")
    missing = summary_lines({}, "x/index.html")
    assert "03_gates did not run" in missing[0] and "04_eval did not run" in missing[1]


@pytest.mark.parametrize(
    "env,tty,expected",
    [
        ({}, True, True),
        ({"CI": "true"}, True, False),
        ({"CI": "0"}, True, True),
        ({"TERM": "dumb"}, True, False),
        ({}, False, False),
    ],
)
def test_live_line_only_on_an_interactive_terminal(monkeypatch, env, tty, expected):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    class Stream(io.StringIO):
        def isatty(self):
            return tty

    assert interactive(Stream()) is expected


@pytest.mark.slow
def test_a_real_run_prints_a_calm_log(smoke_run: Path):
    """The session's smoke run, as `make run` prints it to a non-terminal: header, four stage lines,
    the summary — nothing from the notebooks' progress bars."""
    out = (smoke_run.parent.parent / "stdout.txt").read_text()
    err = (smoke_run.parent.parent / "stderr.txt").read_text()
    lines = out.splitlines()
    assert len(lines) == 1 + 4 + 3, out
    assert lines[0].startswith("lvm-study run smoke")
    for line, name in zip(lines[1:5], ("01_data", "02_train", "03_gates", "04_eval")):
        assert line.split()[:2] == [name, "succeeded"], line
    assert lines[5].startswith("gate ") and lines[6].startswith("model ") and "R@5" in lines[6]
    assert lines[7].startswith("reports ") and lines[7].endswith("index.html")
    assert "it/s" not in out + err and "Executing" not in out + err


def test_a_win_inside_the_noise_never_reads_as_a_plain_win():
    paired = dict(
        HEAD,
        beats_best_baseline=True,
        best_baseline_diff_r5=0.0076,
        best_baseline_diff_r5_ci=[-0.0006, 0.0174],
        best_baseline_diff_cosine=0.0125,
        best_baseline_diff_cosine_ci=[0.0108, 0.0141],
    )
    model = summary_lines(paired, "x")[1]
    assert "beaten on point estimates only: a paired interval reaches 0" in model
    assert "Δ R@5 +0.8 pts [-0.1, +1.7]" in model and "Δ cosine +0.0125 [+0.0108, +0.0141]" in model
    clear = dict(paired, best_baseline_diff_r5_ci=[0.002, 0.02])
    assert "(beaten, both paired intervals above 0; " in summary_lines(clear, "x")[1]
    lost = dict(
        paired, beats_best_baseline=False, best_baseline_diff_r5=-0.195, best_baseline_diff_r5_ci=[-0.22, -0.17]
    )
    assert "(not beaten; paired Δ R@5 -19.5 pts [-22.0, -17.0]" in summary_lines(lost, "x")[1]
