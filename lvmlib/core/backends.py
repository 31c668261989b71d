"""The one backend resolver: every backend setting goes from what the user asked for to what runs here.

Every backend setting (data.encoder_backend, model.scan, eval.search_backend, train.device) goes
through `resolve_backend`.

Each family keeps its own rules beside its code and hands them over as data: the concrete names it
offers, its `auto` rule (a callable that picks one that can run here) and, per name that can be
missing, a callable that says why it cannot run here (None when it can). The resolver owns the
checks and the one error, `BackendError` (exit status 2), whose message names the setting, the value,
the allowed values and the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from lvmlib.core.errors import BackendError

__all__ = ["BackendError", "resolve_backend"]


def resolve_backend(
    setting: str,
    requested: str,
    choices: Sequence[str],
    auto: Callable[[], str],
    unavailable: Mapping[str, Callable[[], str | None]] | None = None,
) -> str:
    """`requested` -> the backend that runs. `auto` -> `auto()` (the family's rule; trusted to pick a
    backend that can run); a name in `choices` -> itself, unless `unavailable[name]()` gives a reason;
    anything else -> BackendError. `choices` may list `auto` itself; it is always allowed."""
    names = [c for c in choices if c != "auto"]
    allowed = ", ".join(["auto", *names])
    if requested == "auto":
        return auto()
    if requested not in names:
        raise BackendError(f"{setting} = {requested!r}: not a backend; choose one of {allowed}")
    why = (unavailable or {}).get(requested, lambda: None)()
    if why:
        raise BackendError(f"{setting} = {requested!r} cannot run here: {why}; choose one of {allowed}")
    return requested
