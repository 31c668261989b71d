"""Params: every shipped file loads; bad keys, types and ranges fail naming file, key and value."""

from pathlib import Path

import pytest

from lvmlib.core.config import ConfigError, config_from_dict, dump_config, load_config, parse_override

PARAMS = sorted(Path(__file__).resolve().parent.parent.joinpath("params").glob("*.yaml"))


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
        ("model:\n  kind: transformer\n", ["bad.yaml", "model.kind", "transformer"]),
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
