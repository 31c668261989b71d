"""Params: every shipped file loads and fits the JSON Schema; bad keys, types and ranges fail naming file, key and value."""

import json
from pathlib import Path

import jsonschema  # a dependency of nbformat
import pytest
import yaml

from lvmlib.core.config import (
    MODEL_KINDS,
    SECTIONS,
    ConfigError,
    config_from_dict,
    dump_config,
    load_config,
    load_run_config,
    params_schema,
    parse_override,
)

# params files; a study file (params/confirm.yaml: top-level `study:`) is lvmlib.core.study's, tested there
PARAMS = sorted(
    p
    for p in Path(__file__).resolve().parent.parent.joinpath("params").glob("*.yaml")
    if "study" not in (yaml.safe_load(p.read_text()) or {})
)
SCHEMA_FILE = PARAMS[0].parent / "params.schema.json"


@pytest.mark.parametrize("path", PARAMS, ids=[p.name for p in PARAMS])
def test_every_params_file_loads_and_round_trips(path):
    cfg = load_config(path)
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert dump_config(again) == dump_config(cfg)


def test_required_params_files_exist():
    names = {p.name for p in PARAMS}
    assert {"default.yaml", "smoke.yaml", "mamba_s_v2.yaml", "mamba_s_v1.yaml"} <= names


def test_seed_configs_are_the_seed():
    v2, v1 = load_config(PARAMS[0].parent / "mamba_s_v2.yaml"), load_config(PARAMS[0].parent / "mamba_s_v1.yaml")
    assert (v2.model.d_model, v2.model.n_layers, v2.model.d_state, v2.model.d_conv, v2.model.expand) == (
        768,
        8,
        128,
        4,
        2,
    )
    assert (v2.loss.lambda_con, v2.loss.lambda_ar, v2.loss.temperature, v2.loss.proj_head) == (0.85, 0.15, 0.07, [])
    assert (v1.loss.lambda_con, v1.loss.lambda_ar, v1.loss.proj_head) == (0.70, 0.30, [512, 256])
    for c in (v1, v2):
        assert c.train.batch_size * c.train.grad_accum == 1024 and c.train.negatives == "effective_batch"
        assert (c.train.article_dropout, c.train.span_corruption, c.train.patience) == (0.2, 0.1, 3)
        assert c.data.context_len == 5


def _write(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, must_name",
    [
        ("train:\n  epochz: 3\n", ["bad.yaml", "train.epochz", "3"]),
        ("trian:\n  epochs: 3\n", ["bad.yaml", "trian"]),
        ("train:\n  epochs: three\n", ["bad.yaml", "train.epochs", "three", "int"]),
        ("train:\n  lr: fast\n", ["bad.yaml", "train.lr", "fast"]),
        ("train:\n  epochs: -1\n", ["bad.yaml", "train.epochs", "-1"]),
        ("data:\n  context_len: 0\n", ["bad.yaml", "data.context_len", "0"]),
        ("data:\n  train_frac: 0.5\n", ["bad.yaml", "sum to 1"]),
        ("loss:\n  lambda_con: -0.5\n", ["bad.yaml", "loss.lambda_con", "-0.5"]),
        ("loss:\n  lambda_con: 0\n  lambda_ar: 0\n", ["bad.yaml", "lambda"]),
        ("model:\n  kind: lstm\n", ["bad.yaml", "model.kind", "lstm"]),
        ("train:\n  article_dropout: 1.5\n", ["bad.yaml", "train.article_dropout", "1.5"]),
        ("loss:\n  proj_head: [512, x]\n", ["bad.yaml", "loss.proj_head"]),
        ("data:\n  source: jsonl\n", ["bad.yaml", "data.path"]),
        ("- a\n- b\n", ["bad.yaml", "mapping"]),
        ("train: [1, 2]\n", ["bad.yaml", "train"]),
        ("train:\n  epochs: 3\n  bad: [\n", ["bad.yaml", "YAML"]),
    ],
)
def test_bad_params_are_named(tmp_path, text, must_name):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    for word in must_name:
        assert word in str(info.value), (word, str(info.value))


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(_write(tmp_path, "train:\n  epochs: true\n"))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_apply_and_are_checked(tmp_path):
    cfg = load_config(PARAMS[0].parent / "smoke.yaml", ["train.epochs=7", "loss.proj_head=[8, 4]", "train.lr=0.5"])
    assert cfg.train.epochs == 7 and cfg.loss.proj_head == [8, 4] and cfg.train.lr == 0.5
    assert load_config(None, ["train.lr=1e-4"]).train.lr == 1e-4  # YAML 1.1 reads 1e-4 as a string
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, ["train.lr=1e-4x"])
    with pytest.raises(ConfigError, match="train.nope"):
        load_config(None, ["train.nope=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("epochs=3")
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=0"])


def test_name_defaults_to_file_stem(tmp_path):
    p = tmp_path / "my_experiment.yaml"
    p.write_text("train:\n  epochs: 2\n")
    assert load_config(p).name == "my_experiment"


# --------------------------------------------------------------------------- the schema
@pytest.mark.parametrize("path", PARAMS, ids=[p.name for p in PARAMS])
def test_every_params_file_points_at_and_fits_the_committed_schema(path):
    text = path.read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=params.schema.json"  # what editors read
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(yaml.safe_load(text) or {})
    load_config(path)


def test_schema_says_what_is_allowed():
    schema = params_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False and set(SECTIONS) <= set(schema["properties"])
    defs = schema["$defs"]
    assert all(defs[d]["additionalProperties"] is False for d in defs)  # unknown keys are refused
    model, train, data, ev = defs["ModelConfig"], defs["TrainConfig"], defs["DataConfig"], defs["EvalConfig"]
    assert model["properties"]["kind"]["enum"] == list(MODEL_KINDS)
    assert train["properties"]["batch_size"] == {
        "default": 256,
        "description": "micro-batch; at most 65536: a bigger micro-batch fits no accelerator's memory; also at most "
        "the run's train windows",
        "minimum": 2,
        "maximum": 65536,
        "title": "Batch Size",
        "type": "integer",
    }
    assert train["properties"]["lr"]["exclusiveMinimum"] == 0 and train["properties"]["lr"]["type"] == "number"
    assert data["properties"]["context_len"]["description"] == (
        "K: chunks in a context window; at most 128: amn and model.residual=context_mix cover at most 128 positions"
    )
    assert (data["properties"]["val_frac"]["minimum"], data["properties"]["val_frac"]["maximum"]) == (0, 1)
    assert ev["properties"]["ks"]["items"] == {"minimum": 1, "type": "integer"}
    assert ev["properties"]["ks"]["contains"] == {"const": 5}
    assert train["properties"]["bf16"]["type"] == "boolean"


# Values the schema alone refuses: the editor (jsonschema) and load_config agree, and the error names file and key.
SCHEMA_REFUSES = [
    ({"train": {"epoch": 3}}, "train.epoch"),
    ({"trian": {"epochs": 3}}, "trian"),
    ({"train": {"epochs": "three"}}, "train.epochs"),
    ({"train": {"epochs": 2.5}}, "train.epochs"),
    ({"train": {"bf16": 1}}, "train.bf16"),
    ({"train": {"batch_size": 1}}, "train.batch_size"),
    ({"model": {"dropout": 1.0}}, "model.dropout"),
    ({"model": {"kind": "lstm"}}, "model.kind"),
    ({"loss": {"proj_head": [512, 0]}}, "loss.proj_head"),
    ({"eval": {"banks": ["global", "nope"]}}, "eval.banks"),
    ({"eval": {"ks": [1, 10]}}, "eval.ks"),
    ({"eval": {"banks": []}}, "eval.banks"),
    ({"train": {"batch_size": 100_000_000}}, "train.batch_size"),
    ({"data": {"context_len": 129}}, "data.context_len"),
    ({"eval": {"bootstrap": 10**9}}, "eval.bootstrap"),
]


@pytest.mark.parametrize("doc, key", SCHEMA_REFUSES, ids=[k for _, k in SCHEMA_REFUSES])
def test_schema_and_loader_refuse_the_same_values(tmp_path, doc, key):
    validator = jsonschema.Draft202012Validator(params_schema())
    assert not validator.is_valid(doc)
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, yaml.safe_dump(doc)))
    assert str(info.value).startswith(f"{tmp_path / 'bad.yaml'}: ") and f"'{key}'" in str(info.value)


# --------------------------------------------------------------------------- one-line errors, word for word
KNOWN_TRAIN = (
    "article_dropout, article_dropout_positions, batch_size, best_metric, bf16, decision_tree, device, "
    "early_stop_metric, epochs, grad_accum, grad_clip, lr, max_train_windows, min_lr_ratio, negatives, nproc, "
    "patience, seed, span_corruption, stop_epoch, threads, val_max_queries, warmup_steps, weight_decay"
)
MESSAGES = [
    # unknown keys and sections
    ("train:\n  epoch: 3\n", f"unknown key 'train.epoch' (value 3); known keys: {KNOWN_TRAIN}"),
    ("trian:\n  epochs: 3\n", "unknown section 'trian'; sections are name, description, " + ", ".join(SECTIONS)),
    ("train:\n  1: 3\n", f"unknown key 'train.1' (value 3); known keys: {KNOWN_TRAIN}"),
    # wrong types: ints refuse bools and 3.0, floats refuse bools, lists are typed
    ("train:\n  epochs: 3.0\n", "key 'train.epochs' expects int, got 3.0 (float)"),
    ("train:\n  grad_clip: true\n", "key 'train.grad_clip' expects float, got True (bool)"),
    ("data:\n  dedup: 'yes'\n", "key 'data.dedup' expects bool, got 'yes' (str)"),
    ("data:\n  path: 3\n", "key 'data.path' expects str, got 3 (int)"),
    ("model:\n  kind: 3\n", "key 'model.kind' expects str, got 3 (int)"),
    ("loss:\n  proj_head: [4, 2.5]\n", "key 'loss.proj_head' expects list[int], got [4, 2.5] (list)"),
    ("eval:\n  ks: 5\n", "key 'eval.ks' expects list[int], got 5 (int)"),
    ("train: 3\n", "section 'train' must be a mapping, got 3"),
    ("name: [a]\n", "key 'name' expects str, got ['a'] (list)"),
    ("train:\n  lr: .inf\n", "key 'train.lr' = inf: must be a finite number"),
    # out of range, with what the bound means
    (
        "train:\n  batch_size: 1\n",
        "key 'train.batch_size' = 1: must be >= 2 (InfoNCE needs at least 2 samples per batch)",
    ),
    ("data:\n  context_len: 0\n", "key 'data.context_len' = 0: K must be >= 1"),
    ("train:\n  max_train_windows: -1\n", "key 'train.max_train_windows' = -1: must be >= 0 (0 = all)"),
    ("model:\n  dropout: 1\n", "key 'model.dropout' = 1.0: must be in [0, 1)"),
    ("train:\n  lr: 0\n", "key 'train.lr' = 0.0: must be > 0"),
    ("train:\n  span_corruption: -0.5\n", "key 'train.span_corruption' = -0.5: is a probability, must be in [0, 1]"),
    ("loss:\n  proj_head: [8, 0]\n", "key 'loss.proj_head' = [8, 0]: layer widths must be >= 1"),
    # above a cap, with why the cap is there
    (
        "train:\n  batch_size: 100000000\n",
        "key 'train.batch_size' = 100000000: must be <= 65536 (a bigger micro-batch fits no accelerator's memory; "
        "also at most the run's train windows)",
    ),
    (
        "train:\n  grad_accum: 5000\n",
        "key 'train.grad_accum' = 5000: must be <= 1024 (an effective batch of 1,024 micro-batches is more than "
        "any recipe uses)",
    ),
    (
        "eval:\n  bootstrap: 1000000\n",
        "key 'eval.bootstrap' = 1000000: must be <= 100000 (10,000 resamples already fix a 95% interval to its "
        "third decimal)",
    ),
    (
        "model:\n  d_model: 100000\n",
        "key 'model.d_model' = 100000: must be <= 16384 (as wide as the largest language models' hidden size; "
        "a vector model needs less)",
    ),
    (
        "data:\n  context_len: 200\n",
        "key 'data.context_len' = 200: must be <= 128 (amn and model.residual=context_mix cover at most 128 positions)",
    ),
    (
        "loss:\n  temperature: 50\n",
        "key 'loss.temperature' = 50.0: must be <= 10 (cosines / tau above 10 are all ~0: InfoNCE learns nothing)",
    ),
    ("data:\n  chunk_workers: -1\n", "key 'data.chunk_workers' = -1: must be >= 0"),
    # choices
    (
        "model:\n  kind: lstm\n",
        "key 'model.kind' = 'lstm': must be one of "
        "['amn', 'context_mean', 'context_mix', 'copy_last', 'global_mean', 'gru', 'knn_successor', 'mamba', 'ridge', "
        "'transformer', 'two_tower']",
    ),
    ("eval:\n  split: train\n", "key 'eval.split' = 'train': must be one of ['test', 'val']"),
    (
        "eval:\n  baselines: [ridge, mlp]\n",
        "key 'eval.baselines' = ['ridge', 'mlp']: each baseline must be one of "
        "['context_mean', 'copy_last', 'global_mean', 'knn_successor', 'ridge']",
    ),
    # rules that tie keys together
    ("data:\n  source: vectors\n", "key 'data.path' = '': data.source 'vectors' needs a file path"),
    ("data:\n  min_words: 20\n  max_words: 10\n", "key 'data.max_words' = 10: must be >= data.min_words (20)"),
    ("gates:\n  lower: 0.6\n", "key 'gates.lower' = 0.6: must be <= gates.threshold (0.5)"),
    ("model:\n  dt_min: 0.5\n", "key 'model.dt_min' = 0.5: need 0 < dt_min <= dt_max (0.1)"),
    (
        "eval:\n  banks: [global]\n  primary_bank: test\n",
        "key 'eval.primary_bank' = 'test': must be one of eval.banks ['global']",
    ),
    (
        "eval:\n  ks: [1, 10]\n",
        "key 'eval.ks' = [1, 10]: k values must be >= 1 and include 5 (R@5 drives the decision)",
    ),
    (
        "data:\n  train_frac: 0.5\n",
        "data.train_frac + data.val_frac + data.test_frac = 0.5 + 0.1 + 0.1 = 0.7000, must sum to 1",
    ),
    ("loss:\n  negatives: bank\nmodel:\n  kind: two_tower\n", "key 'loss.negatives' = 'bank': bank negatives need"),
    ("loss:\n  bank_sample: 4096\n", "key 'loss.bank_sample' = 4096: samples the train bank, which only"),
]


@pytest.mark.parametrize("text, message", MESSAGES, ids=[m.split(":")[0][:40] for _, m in MESSAGES])
def test_bad_values_give_one_line_naming_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{tmp_path / 'bad.yaml'}: {message}")


def _bounded_keys():
    """(section, key, value just past the bound, the bound) for every bounded scalar key of the schema."""
    defs = params_schema()["$defs"]
    for section in SECTIONS:
        for key, prop in defs[f"{section.capitalize()}Config"]["properties"].items():
            kind = int if prop.get("type") == "integer" else float  # a float key reports 0 as 0.0
            step = 1 if kind is int else 0.5
            if "minimum" in prop:
                yield section, key, kind(prop["minimum"] - step), prop["minimum"]
            if "exclusiveMinimum" in prop:
                yield section, key, kind(prop["exclusiveMinimum"]), prop["exclusiveMinimum"]
            if "maximum" in prop:
                yield section, key, kind(prop["maximum"] + step), prop["maximum"]
            if "exclusiveMaximum" in prop:
                yield section, key, kind(prop["exclusiveMaximum"]), prop["exclusiveMaximum"]


BOUNDED = list(_bounded_keys())


@pytest.mark.parametrize("section, key, value, bound", BOUNDED, ids=[f"{s}.{k}={v}" for s, k, v, _ in BOUNDED])
def test_every_bound_is_enforced_and_named(tmp_path, section, key, value, bound):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, f"{section}:\n  {key}: {value}\n"))
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'bad.yaml'}: key '{section}.{key}' = {value!r}: ")
    said = str(bound) if isinstance(bound, int) else f"{bound:g}"  # 65536, not 6.5536e+04
    assert "must be" in msg and said in msg.split(": ", 2)[2]  # says the bound it broke
    assert len(BOUNDED) > 30  # the schema carries the bounds (today's MINIMUMS and ranges)


def test_floats_accept_ints_and_yaml_1_1_exponents(tmp_path):
    cfg = load_config(_write(tmp_path, "train:\n  lr: 1e-4\n  grad_clip: 2\nloss:\n  temperature: 1\n"))
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert type(cfg.train.grad_clip) is float and type(cfg.loss.temperature) is float
    assert "grad_clip: 2.0" in dump_config(cfg)  # stored, and saved, as the float it stands for


def test_empty_sections_and_files_keep_the_defaults(tmp_path):
    assert load_config(_write(tmp_path, "train:\ndata:\n")).to_dict() == {**load_config(None).to_dict(), "name": "bad"}
    assert load_config(_write(tmp_path, "")).train.epochs == 10


def test_a_type_error_names_where_the_value_came_from(tmp_path):
    bad = _write(tmp_path, "train:\n  epochs: three\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: key 'train\.epochs' expects int"):
        load_config(bad, ["train.epochs=3"])  # an override does not hide a wrong file
    with pytest.raises(ConfigError) as info:
        load_config(PARAMS[0].parent / "smoke.yaml", ["train.lr=fast"])
    assert str(info.value).startswith("--set train.lr=fast: key 'train.lr' expects float, got 'fast' (str)")


def test_old_run_params_without_newer_keys_still_load(tmp_path):
    old = load_config(PARAMS[0].parent / "smoke.yaml").to_dict()
    old["name"] = "default"  # a run's saved name is kept as written
    for section, key in (("data", "extra_train_path"), ("model", "residual"), ("eval", "out_dir")):
        del old[section][key]
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(old, sort_keys=False))
    cfg = load_run_config(p)
    assert (cfg.name, cfg.data.extra_train_path, cfg.model.residual, cfg.eval.out_dir) == ("default", "", "none", "")
    assert cfg.train.epochs == old["train"]["epochs"]
    old["train"]["epohcs"] = 3
    p.write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(ConfigError, match=r"params\.yaml: unknown key 'train\.epohcs' \(value 3\)"):
        load_run_config(p)


def test_assignment_is_free_and_copies_are_plain():
    cfg = load_config(None)
    cfg.name = "x"
    cfg.train.epochs = 3  # callers set attributes; only what is loaded is validated
    moved = cfg.model.model_copy(update={"n_layers": 3})
    assert (cfg.name, cfg.train.epochs, moved.n_layers, cfg.model.n_layers) == ("x", 3, 3, 8)
    assert config_from_dict(cfg.to_dict()) == cfg


def test_every_cap_says_why_and_the_models_share_the_context_cap():
    """An upper bound (Field le=) comes with its reason (`Why`), and a `Why` with a bound; the amn and
    context_mix tables are as long as data.context_len may be."""
    from annotated_types import Le

    from lvmlib.core.config import MAX_CONTEXT_LEN, Config, Why
    from lvmlib.model.models import AMN_MAX_LEN

    capped = 0
    for section in SECTIONS:
        for name, info in Config.model_fields[section].annotation.model_fields.items():
            le = [m for m in info.metadata if isinstance(m, Le)]
            why = [m for m in info.metadata if isinstance(m, Why)]
            if info.annotation is float and not why:
                continue  # fractions and probabilities: [0, 1] is their meaning, not a cap
            assert bool(le) == bool(why), f"{section}.{name}: a cap needs its Why and a Why its cap"
            capped += bool(le)
    assert capped >= 20
    assert AMN_MAX_LEN == MAX_CONTEXT_LEN == 128


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data.extra_train_path=corpora/wiki_extra_3000.jsonl.gz", "data.extra_train_articles=0"], "extra_train"),
        (["data.extra_train_path=corpora/wiki_extra_3000.jsonl.gz", "data.extra_train_articles=2501"], "extra_train"),
        (["data.source=jsonl", "data.path=corpora/wiki_extra_3000.jsonl.gz"], "max_articles"),
    ],
)
def test_the_confirmatory_articles_cannot_be_trained_on(overrides, key):
    """Articles 2,500-2,999 of wiki_extra_3000 belong to the confirmatory study: a params file whose first N
    articles of that file reach into them is refused in one line; the first 2,500 are fine."""
    with pytest.raises(ConfigError, match=rf"data.{key}.*2,500-2,999 are the confirmatory test set"):
        load_config(None, overrides)
    ok = [o.replace("=0", "=2500").replace("=2501", "=2500") for o in overrides]
    if key == "max_articles":
        ok.append("data.max_articles=2500")
    assert load_config(None, ok)
