"""Encoder runtimes other than torch: ONNX export, OpenVINO and onnxruntime sessions, the `auto` choice.

Encoder backends other than torch: the model's transformer exported once to ONNX and run by OpenVINO
or onnxruntime (`data.encoder_backend`, docs/data.md). `lvmlib.data.encoder.Encoder` owns pooling,
batching and the cache; this module owns choosing, exporting and loading a runtime.
Shapes: b texts in a batch, t tokens, H hidden width.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lvmlib.core.backends import resolve_backend
from lvmlib.core.config import ENCODER_BACKENDS
from lvmlib.core.errors import DataError
from lvmlib.core.runs import atomic_write_json

if TYPE_CHECKING:
    from lvmlib.data.encoder import Encoder

__all__ = ["BACKENDS", "encoder_backend", "openvino_precision", "load_runner"]

BACKENDS = ENCODER_BACKENDS


def _encoder_auto() -> str:
    """`auto` -> torch where CUDA is available (the GPU is faster than any CPU runtime), else openvino:
    the fastest backend on this CPU whose vectors pass the quality bar (benchmarks/bench_encode.py)."""
    import torch

    return "torch" if torch.cuda.is_available() else "openvino"


def _runtime_missing(module: str):
    """Why a backend whose runtime is `module` cannot run here (None if it can); found without importing it."""
    return lambda: (
        None if importlib.util.find_spec(module) else f"package '{module}' is not installed (pip install {module})"
    )


# the runtime package each exported backend needs (exporting also needs onnx, checked when an export runs)
_UNAVAILABLE = {
    "openvino": _runtime_missing("openvino"),
    "openvino-f32": _runtime_missing("openvino"),
    "onnx": _runtime_missing("onnxruntime"),
    "onnx-int8": _runtime_missing("onnxruntime"),
}


def encoder_backend(requested: str) -> str:
    """data.encoder_backend -> the backend that runs, through the kit's one resolver (BackendError)."""
    return resolve_backend("data.encoder_backend", requested, BACKENDS, _encoder_auto, _UNAVAILABLE)


def openvino_precision() -> str:
    """bf16 where OpenVINO's CPU plugin reports BF16 support (AVX512-BF16 / AMX), else f32."""
    ov = _require("openvino", "openvino")
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if "BF16" in caps else "f32"


def _require(module: str, backend: str):
    if module == "openvino" and "openvino" not in sys.modules:
        # openvino's import counts usage and may send it (openvino_telemetry, opt-out by default): blocked,
        # its converter modules then fall back to their built-in no-op stub. A study run sends nothing.
        sys.modules.setdefault("openvino_telemetry", None)
    try:
        return __import__(module)
    except ImportError:
        raise DataError(
            f"data.encoder_backend {backend!r}: package '{module}' is not installed "
            f"(pip install {module}, or data.encoder_backend=torch)"
        ) from None


def _transformer_module(enc: Encoder):
    """The model's transformer as a module (input_ids, attention_mask) -> last hidden state (b, t, H)."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    hf = enc.model()[0].auto_model.eval()
    example = enc.model().tokenizer(["an example sentence", "two"], padding=True, return_tensors="pt")
    return LastHidden(hf).cpu(), (example["input_ids"], example["attention_mask"])


def _export_onnx(enc: Encoder, out: Path) -> None:
    """model.onnx into `out` (a fresh directory), dynamic batch and token axes. The OpenVINO backends read
    this file too (`Core.read_model`): openvino's own `convert_model` would send usage telemetry."""
    import warnings

    import torch

    _require("onnx", enc.backend)
    module, example = _transformer_module(enc)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(
            module,
            example,
            out / "model.onnx",
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={n: {0: "batch", 1: "tokens"} for n in ("input_ids", "attention_mask", "last_hidden_state")},
        )


def _quantize_int8(src: Path, out: Path) -> None:
    """onnxruntime's dynamic int8 quantisation of every MatMul's weights."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # its advice to pre-process would land in every report
    try:
        quantize_dynamic(src, out, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def _publish(d: Path, name: str, make) -> Path:
    """d/name, made once by `make(staging_dir)` and published by a rename (atomic: a killed export leaves
    no half file; a concurrent run that published first wins and its file is used)."""
    if not (d / name).is_file():
        stage = d.parent / f".{d.name}-{os.getpid()}-{os.urandom(3).hex()}.tmp"
        stage.mkdir(parents=True)
        try:
            make(stage)
            d.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, d / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return d / name


def _export(enc: Encoder, d: Path) -> Path:
    """The model file this backend runs, exported on first use."""
    onnx_path = _publish(d, "model.onnx", lambda st: _export_onnx(enc, st))
    if not (d / "meta.json").is_file():
        atomic_write_json(d / "meta.json", {"encoder": enc.model_id, "format": "onnx"})
    if enc.backend != "onnx-int8":
        return onnx_path
    _require("onnxruntime", enc.backend)
    return _publish(d, "model-int8.onnx", lambda st: _quantize_int8(onnx_path, st / "model-int8.onnx"))


def load_runner(enc: Encoder, d: Path):
    """A runner: an iterable of (key, input_ids, attention_mask) int64 (b, t) batches -> yields
    (key, (b, t, H) float32 token states), in any order, through the backend's runtime.

    OpenVINO runs with its THROUGHPUT hint and as many infer requests in flight as it recommends
    (`OPTIMAL_NUMBER_OF_INFER_REQUESTS`: 2 on 2 cores), so tokenising the next batch overlaps the
    inference of the previous ones; a new batch waits for the oldest request when all are busy, so at
    most that many batches are in flight (~1.2x its LATENCY mode on this machine, docs/data.md).
    onnxruntime runs one batch at a time."""
    path = _export(enc, d)
    import torch

    threads = torch.get_num_threads()
    if enc.backend.startswith("openvino"):
        ov = _require("openvino", enc.backend)
        precision = "f32" if enc.backend == "openvino-f32" else openvino_precision()
        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(str(path)),
            "CPU",
            {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": threads},
        )
        n_requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

        def run_openvino(batches):
            # Plain infer requests, no Python callback: OpenVINO's threads never need the GIL, so nothing
            # can deadlock against this thread (AsyncInferQueue's callbacks did, intermittently).
            from collections import deque

            free = [compiled.create_infer_request() for _ in range(n_requests)]
            busy: deque = deque()  # (key, request) in start order

            def finish():
                key, req = busy.popleft()
                req.wait()
                free.append(req)
                return key, req.get_output_tensor(0).data.copy()

            try:
                for key, ids, mask in batches:
                    if not free:
                        yield finish()
                    req = free.pop()
                    req.start_async({"input_ids": ids, "attention_mask": mask})
                    busy.append((key, req))
                while busy:
                    yield finish()
            finally:
                for _, req in busy:  # an abandoned run: let the requests finish before they are freed
                    req.wait()

        return run_openvino
    ort = _require("onnxruntime", enc.backend)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def run_onnxruntime(batches):
        for key, ids, mask in batches:
            yield key, sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]

    return run_onnxruntime
