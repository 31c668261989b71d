"""The confirmatory study's file (`params/confirm.yaml`): its predictors, seeds, runs and decision rule, one schema.

A study file names the protocol it follows, the `--set` overrides every run shares (the test set, the banks),
the learned predictors (a params file, their own overrides, their seeds), the closed-form baselines scored
inside the headline's runs, and the family of comparisons the correction counts. `load_study` validates it
(unknown keys, wrong types, ids that do not resolve: one line naming the file and the key) and `study_runs`
lists the runs it implies, in the order `python -m lvmlib confirm` trains them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from lvmlib.core.config import BASELINES as BASELINE_KINDS
from lvmlib.core.config import Bool, ConfigError, Float, Int, Str, load_config

ROLES = ("headline", "learned", "secondary")


def _rule(msg: str) -> PydanticCustomError:
    return PydanticCustomError("study_rule", msg)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Predictor(_Strict):
    """One learned predictor: a params file trained once per seed (`train.seed`)."""

    id: Str = Field(description="short id used in run ids and tables, e.g. H, B5, S")
    label: Str = Field("", description="what it is, in a few words (the report's row label)")
    role: Literal[ROLES] = Field(
        "learned",
        description="headline: the recipe under test (exactly one); learned: a baseline in the family; "
        "secondary: reported beside the family, never in it (the seed's Mamba-S)",
    )
    params: Str = Field(description="the params file it trains from")
    set: list[Str] = Field(default_factory=list, description="its own --set overrides, after the study's common ones")
    seeds: list[Int] = Field(default_factory=lambda: [0], min_length=1, description="train.seed of each run")
    note: Str = Field("", description="a sentence the report prints under its row (e.g. the subset it trained on)")


class Baseline(_Strict):
    """A closed-form predictor scored inside the headline's runs (it is in their eval.baselines)."""

    id: Str
    name: Literal[tuple(sorted(BASELINE_KINDS))] = Field(description="the eval.baselines name")
    label: Str = ""


class Study(_Strict):
    """A confirmatory study: python -m lvmlib confirm FILE."""

    study: Str = Field(min_length=1, description="the study's name: eval.study of every run, the run-id prefix")
    protocol: Str = Field(min_length=1, description="the committed protocol file every run's read follows")
    report: Str = Field("confirmatory", description="the report's name: reports/<report>.html")
    primary_bank: Literal[("test", "global")] = Field("test", description="the bank of the primary metric (R@5)")
    k: Int = Field(5, ge=1, le=50, description="R@k of the primary metric")
    alpha: Float = Field(0.05, gt=0, lt=1, description="family-wise error rate; each interval is 1 - alpha/m")
    n_boot: Int = Field(10000, ge=100, description="article-bootstrap resamples")
    force_read: Bool = Field(False, description="eval.force_read of every run: a second study under the protocol")
    common: list[Str] = Field(default_factory=list, description="--set overrides every run shares")
    predictors: list[Predictor] = Field(min_length=1)
    baselines: list[Baseline] = Field(default_factory=list)
    family: list[Str] = Field(min_length=1, description="ids compared with the headline: m = its length")

    @model_validator(mode="after")
    def _ids(self) -> Study:
        ids = [p.id for p in self.predictors] + [b.id for b in self.baselines]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise _rule(f"id {dup[0]!r} is used twice; every predictor and baseline needs its own id")
        heads = [p.id for p in self.predictors if p.role == "headline"]
        if len(heads) != 1:
            raise _rule(f"exactly one predictor has role: headline, found {len(heads)} ({', '.join(heads)})")
        for f in self.family:
            if f not in ids or f in heads:
                raise _rule(f"family lists {f!r}: not a baseline or a non-headline predictor id")
            if any(p.id == f and p.role == "secondary" for p in self.predictors):
                raise _rule(f"family lists {f!r}, a secondary predictor: secondary ones stay out of the family")
        for p in self.predictors:
            if len(set(p.seeds)) != len(p.seeds):
                raise _rule(f"predictor {p.id!r}: a seed is listed twice")
        return self

    @property
    def headline(self) -> Predictor:
        return next(p for p in self.predictors if p.role == "headline")

    @property
    def m(self) -> int:
        return len(self.family)


def study_schema() -> dict[str, Any]:
    """The JSON Schema of a study file (python -m lvmlib schema --study; params/confirm.schema.json)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Study.model_json_schema()}


def load_study(path: str | Path) -> Study:
    """Validate a study file; ConfigError naming the file and the key. The params files it names and every
    run's overrides are validated too (load_config), so a typo fails before any training starts."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: study file not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {' '.join(str(exc).split())}") from None
    try:
        study = Study.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(x) for x in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise ConfigError(f"{p}: key '{key}': {msg}" if err["loc"] else f"{p}: {msg}") from None
    for run in study_runs(study):
        load_config(run["params"], run["overrides"])  # ConfigError: "<params> + --set ...: key ..."
    return study


def run_id(study: Study, pred: Predictor, seed: int) -> str:
    return f"{study.study}-{pred.id}-s{seed}"


def study_runs(study: Study) -> list[dict[str, Any]]:
    """Every run the study implies, headline first, then by predictor and seed:
    [{"predictor", "seed", "run_id", "params", "overrides"}]. Every run gets the study's common overrides,
    then its own, then `train.seed`, `eval.study`, `eval.protocol` (and `eval.force_read` when set)."""
    order = sorted(study.predictors, key=lambda p: ROLES.index(p.role))
    out = []
    for pred in order:
        for seed in pred.seeds:
            tail = [f"train.seed={seed}", f"eval.study={study.study}", {"eval.protocol": study.protocol}]
            if study.force_read:
                tail.append("eval.force_read=true")
            out.append(
                {
                    "predictor": pred.id,
                    "seed": seed,
                    "run_id": run_id(study, pred, seed),
                    "params": pred.params,
                    "overrides": [*study.common, *pred.set, *tail],
                }
            )
    return out
