"""Encoder backends: the exported runtimes give torch's vectors, never share a cache entry with it, export
once, and fail with one clear line. Through the real bundled all-MiniLM-L6-v2, offline."""

from __future__ import annotations

import numpy as np
import pytest

from lvmlib.core.config import ConfigError, load_config
from lvmlib.core.errors import BackendError, DataError
from lvmlib.data import encoder
from lvmlib.data import runtimes as backends

TEXTS = [
    "The cat sat on the mat.",
    "A kitten was sitting on a rug in the hall of the old house.",
    "Stock markets fell sharply today after the central bank raised interest rates again.",
    "Glaciers carve valleys.",
    "The violin has four strings tuned in perfect fifths, G D A E.",
    "Comets are icy bodies that release gas when they pass close to the Sun.",
]


@pytest.fixture(scope="module")
def torch_vectors():
    return encoder.Encoder(encoder.BUNDLED_ENCODER, 256, batch_size=4, backend="torch").encode(TEXTS)


@pytest.mark.parametrize("backend,bar", [("openvino", 0.999), ("openvino-f32", 0.99999), ("onnx", 0.99999)])
def test_exported_backend_gives_torchs_vectors(tmp_path, torch_vectors, backend, bar):
    enc = encoder.Encoder(encoder.BUNDLED_ENCODER, 256, batch_size=4, backend=backend, cache_dir=tmp_path)
    v = enc.encode(TEXTS)
    assert v.shape == torch_vectors.shape and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    cos = (v * torch_vectors).sum(1)
    assert cos.min() >= bar, cos
    # order-independent: length-sorted batches are put back in place
    np.testing.assert_allclose(enc.encode(TEXTS[::-1])[::-1], v, atol=2e-3 if backend == "openvino" else 1e-5)


def test_onnx_int8_is_offered_but_measurably_lossy(tmp_path, torch_vectors):
    """Dynamic int8 quantisation of MiniLM moves vectors well below the 0.99 bar the default must pass
    (benchmarks/bench_encode.py): it is an option, never the default."""
    v = encoder.Encoder(encoder.BUNDLED_ENCODER, 256, batch_size=4, backend="onnx-int8", cache_dir=tmp_path).encode(
        TEXTS
    )
    cos = (v * torch_vectors).sum(1)
    assert 0.8 < cos.mean() < 0.999


def test_export_is_cached_and_reused(tmp_path, monkeypatch):
    enc = encoder.Encoder(encoder.BUNDLED_ENCODER, 256, backend="openvino-f32", cache_dir=tmp_path)
    first = enc.encode(TEXTS[:2])
    d = enc.export_dir()
    assert (d / "model.onnx").is_file() and (d / "meta.json").is_file()
    assert not list(d.parent.glob(".*.tmp")), "the staging directory is gone"

    def no_export(*a, **k):
        raise AssertionError("exported again")

    monkeypatch.setattr(backends, "_export_onnx", no_export)
    again = encoder.Encoder(encoder.BUNDLED_ENCODER, 256, backend="openvino-f32", cache_dir=tmp_path).encode(TEXTS[:2])
    np.testing.assert_allclose(again, first, atol=1e-6)


def test_backends_never_share_a_cache_entry(tmp_path):
    ids = {b: encoder.Encoder(encoder.BUNDLED_ENCODER, 256, backend=b).cache_id for b in encoder.BACKENDS}
    assert ids["torch"] == encoder.BUNDLED_ENCODER  # caches written before backends existed stay valid
    assert len(set(ids.values())) == len(ids)
    assert ids["openvino"].endswith(("backend=openvino-bf16", "backend=openvino-f32"))
    dirs = {encoder.EmbeddingCache(tmp_path, i, 256).dir for i in ids.values()}
    assert len(dirs) == len(ids)


def test_auto_resolves_by_device(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert encoder.encoder_backend("auto") == "openvino"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert encoder.encoder_backend("auto") == "torch"
    assert encoder.encoder_backend("onnx-int8") == "onnx-int8"
    with pytest.raises(
        BackendError, match="data.encoder_backend = 'tensorrt': not a backend; choose one of auto, torch"
    ):
        encoder.encoder_backend("tensorrt")


def test_backend_without_its_runtime_is_refused_before_any_export(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(
        BackendError, match="data.encoder_backend = 'onnx' cannot run here: package 'onnxruntime' is not"
    ):
        encoder.Encoder(encoder.BUNDLED_ENCODER, 256, backend="onnx")
    assert encoder.encoder_backend("openvino") == "openvino"  # its runtime is another package


def test_bad_backend_in_params_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="encoder_backend"):
        load_config(None, ["data.encoder_backend=tensorrt"])


def test_unsupported_pipeline_is_a_clear_error(tmp_path, monkeypatch):
    class NotPooled(list):
        tokenizer = None

        def get_embedding_dimension(self):
            return 4

    fake = NotPooled([type("Transformer", (), {})(), type("Dense", (), {})()])
    fake.max_seq_length = 0
    monkeypatch.setattr(encoder, "load_encoder", lambda name: fake)
    enc = encoder.Encoder("some-model", 256, backend="openvino", cache_dir=tmp_path)
    with pytest.raises(DataError, match=r"Transformer -> Dense.*data.encoder_backend=torch"):
        enc.encode(["a text"])


def test_openvino_is_imported_without_its_usage_telemetry():
    """openvino's package counts and reports usage unless opted out; a study run must send nothing."""
    import subprocess
    import sys

    code = (
        "import sys; from lvmlib.data import encoder; encoder.openvino_precision(); "
        "print('openvino_telemetry' in sys.modules and sys.modules['openvino_telemetry'] is not None)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
