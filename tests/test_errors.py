"""One exception base: every error class the kit defines subclasses `LvmError`, and the CLI turns any of
them into one line and an exit status without listing them."""

import importlib
import inspect
import pkgutil

import pytest

import lvmlib
from lvmlib.app.cli import main
from lvmlib.core.config import ConfigError
from lvmlib.core.errors import LvmError
from lvmlib.data.corpus import CorpusError
from lvmlib.train.loop import TrainingDiverged


def _kit_exception_classes() -> list[type]:
    found = []
    for info in pkgutil.walk_packages(lvmlib.__path__, prefix="lvmlib."):
        if info.name.endswith("__main__"):  # importing it runs a command
            continue
        mod = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("lvmlib."):
                found.append(obj)
    return found


def test_every_kit_exception_subclasses_lvm_error():
    classes = _kit_exception_classes()
    names = {c.__name__ for c in classes}
    # the classes the issue counted, so the walk above cannot silently find nothing
    assert {
        "ConfigError",
        "RunError",
        "DataError",
        "CorpusError",
        "LeakageError",
        "SanityError",
        "CheckpointError",
        "StudyFailed",
        "StudyInterrupted",
        "CompareFailed",
        "ScalingFailed",
        "ScanBackendError",
        "TrainingDiverged",
    } <= names
    assert [c.__name__ for c in classes if not issubclass(c, LvmError)] == []


@pytest.mark.parametrize(
    "exc, status, line",
    [
        (ConfigError("bad.yaml: unknown key 'x'"), 2, "error: bad.yaml: unknown key 'x'"),
        (CorpusError("c.jsonl line 3: not JSON"), 1, "error: CorpusError: c.jsonl line 3: not JSON"),
        (TrainingDiverged("loss is nan at step 7"), 1, "error: TrainingDiverged: loss is nan at step 7"),
    ],
)
def test_cli_prints_one_line_and_the_status_of_any_kit_error(monkeypatch, capsys, exc, status, line):
    import lvmlib.app.cli as cli

    def boom(args):
        raise exc

    monkeypatch.setattr(cli, "_dispatch", boom)
    assert main(["check", "params/smoke.yaml"]) == status
    assert capsys.readouterr().err.strip() == line
