"""A model over many inputs: batched predictions for context windows, the bank in the model's retrieval space."""

from __future__ import annotations

import numpy as np
import torch

from lvmlib import metrics as mt


@torch.no_grad()
def predict(model: torch.nn.Module, contexts: np.ndarray, device: torch.device, batch: int = 512) -> np.ndarray:
    """(n, K, D) -> (n, D') float32 predictions."""
    out = [
        model(torch.as_tensor(contexts[s : s + batch], device=device)).float().cpu().numpy()
        for s in range(0, len(contexts), batch)
    ]
    return np.concatenate(out) if out else np.zeros((0, contexts.shape[-1]), np.float32)


@torch.no_grad()
def model_bank(model: torch.nn.Module, bank: np.ndarray, device: torch.device, chunk: int = 65536) -> np.ndarray:
    """The bank in the model's retrieval space: the bank itself, or two_tower's encoded rows, L2-normalised."""
    if getattr(model, "retrieval_space", "bank") == "bank":
        return bank
    return np.concatenate(
        [
            mt.l2_normalize(model.encode_bank(mt.to_tensor(bank[s : s + chunk], device)).float().cpu().numpy())
            for s in range(0, len(bank), chunk)
        ]
    )
