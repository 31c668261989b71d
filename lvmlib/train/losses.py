"""Training losses: InfoNCE, the autoregressive cosine, the V1 head, the false-negative mask, the gradient cache.

Training losses: InfoNCE over in-batch negatives, the autoregressive cosine loss, the V1 projection
head, the false-negative mask, and the gradient cache that spans the whole effective batch.

Shapes: B queries (predictions), N keys (targets; N = B here, positives on the diagonal),
D vector width (D' for two_tower's learned space), E projection-head width (V1), b micro-batch,
A grad-accum micro-batches, W processes (DDP ranks).

Negatives (`loss.negatives`): `batch` (seed) — the other targets of the effective batch; `bank` — an
exact softmax over every chunk of the train bank (`BankNegatives`), each query's own context chunks and
the duplicates of its context and target removed, exactly as evaluation's primary bank removes them. A
bank loss is a mean of per-query terms whose negatives do not depend on the rest of the batch, so plain
gradient accumulation already equals one big batch (no gradient cache needed) and under DDP every rank
holds the whole train bank and averaging gradients over ranks is exact.

Recipes (seed):
  V2: loss = 0.85 * InfoNCE(tau=0.07) on L2-normalised raw outputs + 0.15 * (1 - cos(pred, target))
  V1: loss = 0.70 * InfoNCE in a D -> 512 -> 256 projection head + 0.30 * (1 - cos) on the raw output
Targets are data (stop-grad); only two_tower's passage tower puts a graph on the target side.

Gradient cache (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup"; luyug/GradCache): with batch b x accum A, naive accumulation gives b-1 negatives. Instead:
(1) embed every micro-batch without a graph, (2) gather the A*b (x W ranks) embeddings and take the
loss and its gradient w.r.t. them, (3) re-run each micro-batch with a graph and back-propagate the
cached embedding gradient. Parameter gradients equal those of one batch of A*b*W; activation memory
stays that of one micro-batch. Dropout is replayed by restoring each micro-batch's RNG state.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from lvmlib.core.config import LossConfig

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of exp(logit_scale) = 1/tau


# --------------------------------------------------------------------------- the pieces
def info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | torch.Tensor,
    mask: torch.Tensor | None = None,
    symmetric: bool = False,
) -> torch.Tensor:
    """Mean InfoNCE of queries q (B, .) against keys k (B, .); the positive of row i is key i.

    Both sides are L2-normalised; logits = scale * q @ k.T (scale = 1/tau). `mask` (B, B) bool, True =
    drop that key from row i's negatives (the diagonal is never dropped). `symmetric` averages the
    q->k and k->q directions (CLIP).
    """
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"info_nce: {q.shape[0]} queries but {k.shape[0]} keys (positives are on the diagonal)")
    q = F.normalize(q.float(), dim=-1)  # (B, E)
    k = F.normalize(k.float(), dim=-1)  # (B, E)
    logits = scale * q @ k.T  # (B, B)
    labels = torch.arange(q.shape[0], device=q.device)  # (B)
    if mask is not None:
        mask = mask & ~torch.eye(q.shape[0], dtype=torch.bool, device=q.device)  # (B, B)
        logits = logits.masked_fill(mask, float("-inf"))
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, labels))
    return loss


def ar_cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Autoregressive cosine loss: mean(1 - cos(pred, target)); (B, D), (B, D) -> ()."""
    return (1.0 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()


def false_negative_mask(keys: torch.Tensor, window: int = 1, dup_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, B) bool, True = key j is a false negative for query i, so it leaves row i's negatives.

    keys (B, 2) int64: (article_id, position) of each target. Masked: targets of the same article
    within +-window positions of row i's positive, and (dup_ids (B) given) exact-duplicate targets.
    The diagonal (the positive itself) is never masked.
    """
    same_article = keys[:, None, 0] == keys[None, :, 0]  # (B, B)
    near = (keys[:, None, 1] - keys[None, :, 1]).abs() <= window  # (B, B)
    mask = same_article & near  # (B, B)
    if dup_ids is not None:
        mask |= dup_ids[:, None] == dup_ids[None, :]
    mask.fill_diagonal_(False)
    return mask


TINY = 1e-30  # bank entries below this are zeroed (subnormal products; see BankNegatives)


def bank_info_nce(
    q: torch.Tensor,
    target: torch.Tensor,
    bank: torch.Tensor,
    scale: float | torch.Tensor,
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
    log_weight: float = 0.0,
) -> torch.Tensor:
    """Mean InfoNCE of queries q (B, D) whose positive is `target` (B, D) against every row of `bank`
    (M, D), L2-normalised rows, stop-grad. logits = scale * [q.t, q @ bank.T]; `exclude` = (query index,
    bank column) pairs dropped from that query's negatives (its target's own row and duplicates, its
    context rows and their duplicates). `log_weight` is added to every negative logit: log(M / S) when
    `bank` is a uniform sample of S of the M train chunks, so the sample's softmax mass estimates the whole
    bank's (sampled softmax with a uniform proposal)."""
    q = F.normalize(q.float(), dim=-1)  # (B, D)
    t = F.normalize(target.float(), dim=-1)  # (B, D)
    pos = scale * (q * t).sum(-1)  # (B)
    if bank.dtype != torch.float32:  # a bf16 bank: both matmuls in bf16 (fp32 accumulation), the rest float32
        none = torch.empty(0, dtype=torch.long, device=q.device)
        lse = _LowPrecisionBankLSE.apply(q * scale, bank, *(exclude if exclude is not None else (none, none)))
    else:
        logits = (q * scale) @ bank.T  # (B, M); mm's backward keeps its inputs, not this, so in place is safe
        if exclude is not None and exclude[0].numel():
            logits.index_put_(exclude, torch.tensor(float("-inf"), device=logits.device))
        lse = torch.logsumexp(logits, dim=1)
    # log(e^pos + sum e^logits) without concatenating a (B, M + 1) copy
    return (torch.logaddexp(pos, lse + log_weight) - pos).mean()


class _LowPrecisionBankLSE(torch.autograd.Function):
    """logsumexp over a bf16 bank's logits, (B, D) x (M, D) -> (B), excluded (query, column) pairs at -inf.

    Both matmuls (the logits, and the softmax times the bank in the backward) run in the bank's dtype; the
    logits are kept once in float32 and the backward turns them into the softmax in place, so no (B, M)
    temporaries beyond that one (autograd's generic path made ~6 of them, as much time as the bf16 matmuls)."""

    @staticmethod
    def forward(ctx, qs: torch.Tensor, bank: torch.Tensor, qi: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        logits = (qs.to(bank.dtype) @ bank.T).float()  # (B, M)
        if qi.numel():
            logits.index_put_((qi, cols), torch.tensor(float("-inf"), device=logits.device))
        lse = torch.logsumexp(logits, dim=1)
        ctx.save_for_backward(logits, lse, bank)
        return lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        logits, lse, bank = ctx.saved_tensors
        p = logits.sub_(lse[:, None]).exp_().mul_(grad[:, None])  # softmax x upstream gradient; -inf -> 0
        return (p.to(bank.dtype) @ bank).float(), None, None, None


class BankNegatives:
    """The train bank as negatives for `loss.negatives: bank`.

    vectors (M, D) the whole corpus bank; rows (M_t,) the train-split rows that become negatives;
    groups (M,) duplicate-group ids (`metrics.duplicate_groups`: rows with bit-identical vectors share one).
    `exclusions(ctx_rows (b, K), tgt_rows (b,))` -> (query index, column) pairs: every bank column whose
    group is the target's or one of the context rows' groups.
    `dtype` "bfloat16" (`loss.bank_dtype`) stores the bank in bf16, so `bank_info_nce` runs its two
    matmuls in bf16 (with avx512_bf16 the bank loss ~1.9x faster than float32 here; benchmarks/profile_step.py).
    `draw(rng, n)` picks the negatives of the next optimizer step: `active` is every row (n = 0) or a fresh
    uniform subset of n rows (`log_weight` = log(M / n)); `exclusions` then names columns of `active`."""

    def __init__(
        self,
        vectors: np.ndarray,
        rows: np.ndarray,
        groups: np.ndarray,
        device: torch.device | str = "cpu",
        dtype: str = "float32",
    ):
        rows = np.asarray(rows, dtype=np.int64)
        bank = F.normalize(torch.from_numpy(np.asarray(vectors[rows], dtype=np.float32)), dim=-1)  # (M_t, D)
        # all-MiniLM-L6-v2 leaves two of its 384 dimensions at ~1e-38 in every vector: times the softmax
        # gradient (down to ~1e-11) those make subnormal products, on which MKL's sgemm of the backward
        # (grad (B, M) @ bank) ran 12x slower (3.3 vs 0.26 s at M = 167K on this CPU). Entries below 1e-30
        # cannot move a float32 logit (a sum of O(0.01) terms), so they become exact zeros.
        self.bank = bank.masked_fill(bank.abs() < TINY, 0.0).to(device=device, dtype=getattr(torch, dtype))
        groups = np.asarray(groups, dtype=np.int64)
        col = np.full(len(groups), -1, dtype=np.int64)
        col[rows] = np.arange(len(rows))
        self.col_of_row = col  # (M,) -1 = not a negative
        self.groups = groups
        self._order = np.argsort(groups, kind="stable")  # rows grouped by group id
        self._sorted = groups[self._order]
        self.device = device
        self.draw(None, 0)

    def __len__(self) -> int:
        return int(self.bank.shape[0])

    def draw(self, rng: np.random.Generator | None, n: int) -> None:
        """Negatives of the next step: all rows (rng None, n 0 or n >= M) or n rows drawn uniformly, no repeats."""
        if rng is None or n <= 0 or n >= len(self):
            self.cols, self.active, self.log_weight = None, self.bank, 0.0
            return
        self.cols = np.sort(rng.choice(len(self), n, replace=False))  # (n) bank columns, ascending
        self.active = self.bank[torch.from_numpy(self.cols).to(self.device)]  # (n, D)
        self.log_weight = math.log(len(self) / n)

    def exclusions(self, ctx_rows: np.ndarray, tgt_rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.concatenate([np.asarray(tgt_rows, np.int64)[:, None], np.asarray(ctx_rows, np.int64)], axis=1)
        b, width = rows.shape
        g = self.groups[rows.ravel()]  # (b*(K+1))
        lo = np.searchsorted(self._sorted, g, "left")
        hi = np.searchsorted(self._sorted, g, "right")
        counts = hi - lo
        qi = np.repeat(np.repeat(np.arange(b), width), counts)
        offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        members = self._order[np.repeat(lo, counts) + offs]
        cols = self.col_of_row[members]
        keep = cols >= 0
        qi, cols = qi[keep], cols[keep]
        width = len(self) + 1
        if self.cols is not None:  # columns of the drawn subset; excluded rows it did not draw need no mask
            pos = np.minimum(np.searchsorted(self.cols, cols), len(self.cols) - 1)
            hit = self.cols[pos] == cols
            qi, cols, width = qi[hit], pos[hit], len(self.cols) + 1
        code = np.unique(qi * width + cols)  # each pair once
        return (
            torch.from_numpy(code // width).to(self.device),
            torch.from_numpy(code % width).to(self.device),
        )


def projection_head(d_in: int, widths: list[int]) -> nn.Module:
    """V1's head, e.g. widths [512, 256]: Linear(D, 512) -> GELU -> Linear(512, 256)."""
    layers: list[nn.Module] = []
    for i, w in enumerate(widths):
        layers.append(nn.Linear(d_in if i == 0 else widths[i - 1], w))
        if i < len(widths) - 1:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class LVMLoss(nn.Module):
    """lambda_con * InfoNCE (raw space, or V1's projection head) + lambda_ar * (1 - cos) (raw space).

    forward(pred (B, D'), key (B, D'), mask (B, B) | None) -> {"loss", "infonce", "ar_cosine"}.
    `key` is the target in the prediction's space: the target vector, or two_tower's encode_bank(target).
    Trainable state (V1 head, learnable logit scale) lives here; the trainer optimises it with the model.
    """

    def __init__(self, cfg: LossConfig, d_vec: int):
        super().__init__()
        self.cfg = cfg
        self.head = projection_head(d_vec, list(cfg.proj_head)) if cfg.proj_head else None
        self.bank: BankNegatives | None = None  # set by the trainer for loss.negatives = bank
        init = torch.tensor(math.log(1.0 / cfg.temperature))
        if cfg.learn_temperature:
            self.logit_scale = nn.Parameter(init)  # log(1/tau), CLIP-style
        else:
            self.register_buffer("logit_scale", init)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    @property
    def temperature(self) -> float:
        return float(1.0 / self.scale().detach())

    def mask(self, keys: torch.Tensor, dup_ids: torch.Tensor | None = None) -> torch.Tensor | None:
        if not self.cfg.mask_false_negatives:
            return None
        return false_negative_mask(keys, self.cfg.false_negative_window, dup_ids)

    def contrastive(self, pred: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """In-batch InfoNCE (also what validation reports as val_infonce, whatever the training negatives)."""
        if self.head is not None:
            pred, key = self.head(pred.float()), self.head(key.float())  # (B, E) each
        return info_nce(pred, key, self.scale(), mask, self.cfg.symmetric)

    def forward(
        self,
        pred: torch.Tensor,
        key: torch.Tensor,
        mask: torch.Tensor | None = None,
        rows: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> dict:
        """rows = (ctx_rows (B, K), tgt_rows (B,)) bank rows of the samples: needed by bank negatives."""
        if self.bank is not None:
            if rows is None:
                raise ValueError("loss.negatives = bank needs each sample's bank rows (MicroBatch.rows)")
            b = self.bank
            nce = bank_info_nce(pred, key, b.active, self.scale(), b.exclusions(*rows), b.log_weight)
        else:
            nce = self.contrastive(pred, key, mask)
        ar = ar_cosine(pred, key)
        loss = self.cfg.lambda_con * nce + self.cfg.lambda_ar * ar
        return {"loss": loss, "infonce": nce, "ar_cosine": ar}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups for the loss's own parameters: decay on head matrices only."""
        named = list(self.named_parameters(prefix="loss"))
        groups = []
        for decay in (True, False):
            chosen = [(n, p) for n, p in named if (p.dim() >= 2) == decay]
            if chosen:  # named like lvmlib.model.models.param_groups (torch wants all groups named or none)
                groups.append(
                    {
                        "params": [p for _, p in chosen],
                        "param_names": [n for n, _ in chosen],
                        "weight_decay": weight_decay if decay else 0.0,
                    }
                )
        return groups


# --------------------------------------------------------------------------- one optimizer step
@dataclass
class MicroBatch:
    ctx: torch.Tensor  # (b, L, D) contexts, already augmented
    tgt: torch.Tensor  # (b, D) target vectors
    keys: torch.Tensor  # (b, 2) int64 (article_id, position) of the targets
    dup: torch.Tensor | None = None  # (b) int64 duplicate-group ids of the targets
    rows: tuple[np.ndarray, np.ndarray] | None = None  # (ctx_rows (b, K), tgt_rows (b,)) bank rows (bank negatives)


Encode = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@contextlib.contextmanager
def _rng_replay(state: tuple | None) -> Iterator[tuple]:
    """Capture (state None) or restore the CPU and CUDA RNG, so a re-run replays the same dropout."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if state is None:
        state = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None)
        yield state
        return
    after = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None)
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])
    try:
        yield state
    finally:  # leave the stream where the first pass left it, so the step consumes randomness once
        torch.set_rng_state(after[0])
        if after[1] is not None:
            torch.cuda.set_rng_state_all(after[1])


def _gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a (n, ...) tensor over DDP ranks (no graph: used on cached embeddings)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)  # (W*n, ...)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _stats(out: dict) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in out.items()}


def cached_step(
    encode: Encode,
    loss_fn: LVMLoss,
    micro: list[MicroBatch],
    key_tower: bool = False,
    sync: Callable[[bool], contextlib.AbstractContextManager] | None = None,
    embed: Encode | None = None,
) -> dict[str, float]:
    """Gradient-cache step: InfoNCE over every sample of `micro` (and of every DDP rank).

    `encode(ctx, tgt) -> (pred, key)`; `key` is `tgt` itself unless the model has a passage tower
    (`key_tower=True`: two_tower, whose targets are not stop-grad).
    Accumulates parameter gradients (model and loss_fn) equal to one batch of all those samples;
    returns the loss terms as floats. A non-finite loss returns before any gradient is touched.
    `sync(last)` wraps each re-run (DDP: `no_sync()` except on the last micro-batch); `embed` is the
    graph-free encoder of pass 1 (DDP: the unwrapped module), default `encode`.
    The loss's own parameters get the gradient of the global loss (identical on every rank).
    Under DDP every rank computes the same global loss; the embedding gradient of its own slice is
    scaled by W because DDP averages parameter gradients over ranks (the sum is what we need).
    """
    rank, world = _world()
    states, preds, keys_emb = [], [], []
    with torch.no_grad():  # pass 1: embeddings only, no activations kept
        for mb in micro:
            with _rng_replay(None) as st:
                states.append(st)
                p, k = (embed or encode)(mb.ctx, mb.tgt)
            preds.append(p.float())
            keys_emb.append(k.float())
    key_grad = key_tower
    P = _gather(torch.cat(preds)).requires_grad_()  # (W*A*b, D')
    K = _gather(torch.cat(keys_emb)).requires_grad_(key_grad)  # (W*A*b, D')
    meta = _gather(torch.cat([mb.keys for mb in micro]).to(P.device))  # (W*A*b, 2)
    dups = micro[0].dup is not None
    dup = _gather(torch.cat([mb.dup for mb in micro]).to(P.device)) if dups else None  # (W*A*b)
    out = loss_fn(P, K, loss_fn.mask(meta, dup))
    if not torch.isfinite(out["loss"]):
        return _stats(out)
    out["loss"].backward()  # grads of P, K and of the loss's own parameters (head, logit scale)
    n_local = sum(mb.ctx.shape[0] for mb in micro)
    lo = rank * n_local
    gP = P.grad[lo : lo + n_local] * world  # (A*b, D')
    gK = K.grad[lo : lo + n_local] * world if key_grad else None  # (A*b, D')
    start = 0
    for i, mb in enumerate(micro):  # pass 2: re-run with a graph, push the cached gradient through
        n = mb.ctx.shape[0]
        ctx_mgr = sync(i == len(micro) - 1) if sync is not None else contextlib.nullcontext()
        with ctx_mgr, _rng_replay(states[i]):
            p, k = encode(mb.ctx, mb.tgt)
            surrogate = (p.float() * gP[start : start + n]).sum()
            if gK is not None:
                surrogate = surrogate + (k.float() * gK[start : start + n]).sum()
            surrogate.backward()
        start += n
    return _stats(out)


def direct_step(
    encode: Encode,
    loss_fn: LVMLoss,
    micro: list[MicroBatch],
    key_tower: bool = False,
    sync: Callable[[bool], contextlib.AbstractContextManager] | None = None,
) -> dict[str, float]:
    """Plain accumulation: each micro-batch is its own InfoNCE batch (b-1 negatives, this rank only);
    gradients of the mean over micro-batches. `negatives: micro_batch`, or a single micro-batch, or bank
    negatives (then every sample already sees the whole train bank)."""
    totals: dict[str, float] = {}
    outs = []
    for i, mb in enumerate(micro):
        ctx_mgr = sync(i == len(micro) - 1) if sync is not None else contextlib.nullcontext()
        with ctx_mgr:
            p, k = encode(mb.ctx, mb.tgt)
            mask = (
                None
                if loss_fn.bank is not None
                else loss_fn.mask(mb.keys.to(p.device), mb.dup.to(p.device) if mb.dup is not None else None)
            )
            out = loss_fn(p.float(), k.float(), mask, mb.rows)
            outs.append(_stats(out))
            if not math.isfinite(outs[-1]["loss"]):
                return outs[-1]
            (out["loss"] / len(micro)).backward()
    for key in outs[0]:
        totals[key] = sum(o[key] for o in outs) / len(outs)
    return totals
