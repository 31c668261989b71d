"""Latency of one query at batch 1: model forward, exact search over the bank, and both together (P50/P95)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from lvmlib import metrics as mt


def _pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "mean": float(a.mean())}


def measure_latency(
    model: torch.nn.Module,
    contexts: np.ndarray,
    bank: np.ndarray,
    k: int,
    *,
    backend: str,
    device: torch.device,
    threads: int = 1,
    warmup: int = 3,
) -> dict[str, Any]:
    """Per query at batch 1: model forward, search of its (normalised) output over `bank`, and both
    together, timed separately in milliseconds. The search index is built once, outside the timings.
    `threads` (0 = leave as is) pins torch and faiss threads while timing: one query at a time is a
    serving shape, and spinning thread pools on a shared CPU would time the neighbours instead."""
    old = torch.get_num_threads()
    faiss = None
    if backend == "faiss":
        import faiss

        old_f = faiss.omp_get_max_threads()
    if threads:
        torch.set_num_threads(threads)
        if faiss is not None:
            faiss.omp_set_num_threads(threads)
    try:
        with torch.no_grad():
            rec = _time_queries(model, contexts, bank, k, backend, device, warmup)
    finally:
        torch.set_num_threads(old)
        if faiss is not None:
            faiss.omp_set_num_threads(old_f)
    rec["threads"] = threads or old
    return rec


def _time_queries(model, contexts, bank, k, backend, device, warmup) -> dict[str, Any]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if backend == "faiss":
        import faiss

        index = faiss.IndexFlatIP(bank.shape[1])
        index.add(np.ascontiguousarray(bank, np.float32))
        search = lambda q: index.search(q, k)
    else:
        bt = mt.to_tensor(bank, device)  # (M, D')
        search = lambda q: torch.topk(torch.as_tensor(q, device=device) @ bt.T, k, dim=1).indices.cpu()

    def forward(i):
        y = model(torch.as_tensor(contexts[i : i + 1], device=device))  # (1, D')
        sync()
        return mt.l2_normalize(y.float().cpu().numpy())

    times: dict[str, list[float]] = {"forward_ms": [], "search_ms": [], "total_ms": []}
    for i in range(-warmup, len(contexts)):
        j = max(i, 0)
        t0 = time.perf_counter()
        q = forward(j)
        t1 = time.perf_counter()
        search(q)
        sync()
        t2 = time.perf_counter()
        q = forward(j)
        search(q)
        sync()
        t3 = time.perf_counter()
        if i >= 0:
            times["forward_ms"].append(1e3 * (t1 - t0))
            times["search_ms"].append(1e3 * (t2 - t1))
            times["total_ms"].append(1e3 * (t3 - t2))
    return {
        **{k_: _pct(v) for k_, v in times.items()},
        "n_queries": len(contexts),
        "bank_size": len(bank),
        "k": k,
        "backend": backend,
        "device": str(device),
    }
