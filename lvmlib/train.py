"""The training loop: augmentation, AdamW + warmup/cosine, gradient-cache InfoNCE, per-epoch validation,
early stopping, best/last checkpoints, the epoch-2 decision tree in the loop, resume, status, DDP.

Shapes: B micro-batch, A grad-accum, W DDP ranks, L context length (K), D vector width, D' retrieval
width (two_tower), M bank rows.

Files (rank 0 only, all atomic): history.json (one record per epoch, rewritten every epoch),
best.pt / last.pt (`lvmlib.model.save_checkpoint`; last.pt also carries optimizer, scheduler, RNG
states, early-stop counters and the history, so `resume=True` continues exactly), train.log (human
log, appended), train_progress.json (pid, epoch, step: what `status` reads while training runs).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DistributedSampler

from .config import DROPOUT_POSITIONS, Config, dump_config, load_config
from .errors import LvmError
from .gates import in_loop_action
from .losses import BankNegatives, LVMLoss, MicroBatch, cached_step, direct_step
from .metrics import duplicate_groups
from .runs import (RunError, RunLock, atomic_write_json, atomic_write_text, describe_holder, lock_state, now_iso,
                   pid_alive, progress_bar, read_json)

HIGHER_IS_BETTER = {"val_cosine": True, "val_recall_at_5": True, "val_mrr": True, "val_infonce": False,
                    "train_loss": False}
TIMING_KEYS = ("seconds", "train_seconds", "val_seconds", "seq_per_s")  # differ between identical runs
PROGRESS_EVERY_S = 10.0


class TrainingDiverged(LvmError, FloatingPointError):
    """The loss became NaN/inf; the message names the epoch, step and the last good checkpoint."""


# --------------------------------------------------------------------------- pieces (tested alone)
def lr_factor(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier of optimizer step `step` (0-based): linear warmup to 1, then cosine to min_ratio."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def augment(ctx: np.ndarray, rng: np.random.Generator, article_dropout: float, span_corruption: float,
            positions: str = "last"):
    """Training-batch augmentation of contexts (b, L, D) -> new array (the input is not modified).

    Span corruption (p each sample): one position j ~ U{0..L-1} takes position j of another sample.
    Article dropout (p each sample): k ~ U{1..L} positions are zeroed — the last k (`positions="last"`,
    the seed) or the first k (`"first"`, which keeps the most recent chunk).
    Returns (ctx_aug, info) with info = {"corrupted" (b) bool, "dropped" (b) bool, "drop_k" (b) int}.
    """
    if positions not in DROPOUT_POSITIONS:
        raise ValueError(f"augment: positions must be 'last' or 'first', got {positions!r}")
    b, L, _ = ctx.shape
    out = ctx.copy()  # (b, L, D)
    corrupted = rng.random(b) < span_corruption  # (b)
    if b < 2:
        corrupted[:] = False
    rows = np.flatnonzero(corrupted)
    pos = rng.integers(0, L, size=rows.size)
    other = (rows + rng.integers(1, max(b, 2), size=rows.size)) % b  # never the sample itself
    out[rows, pos] = ctx[other, pos]
    dropped = rng.random(b) < article_dropout  # (b)
    drop_k = np.where(dropped, rng.integers(1, L + 1, size=b), 0)  # (b)
    if positions == "last":
        zero = np.arange(L)[None, :] >= (L - drop_k)[:, None]  # (b, L)
    else:
        zero = np.arange(L)[None, :] < drop_k[:, None]  # (b, L)
    out[zero] = 0.0
    return out, {"corrupted": corrupted, "dropped": dropped, "drop_k": drop_k}


def _rows(bank: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.asarray(bank[idx], dtype=np.float32)  # (..., D), float16 banks are widened


class _Encode(nn.Module):
    """(ctx, tgt) -> (pred, key): key = the target in the prediction's space (two_tower: its tower)."""

    def __init__(self, model: nn.Module, key_tower: bool, bf16: bool):
        super().__init__()
        self.model, self.key_tower, self.bf16 = model, key_tower, bf16

    def forward(self, ctx: torch.Tensor, tgt: torch.Tensor):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            pred = self.model(ctx)  # (B, D')
            key = self.model.encode_bank(tgt) if self.key_tower else tgt  # (B, D')
        return pred.float(), key.float()


# --------------------------------------------------------------------------- validation
VAL_KS = (1, 5, 10)


def val_queries(prep, cfg: Config) -> dict[str, np.ndarray]:
    """The val windows validation ranks: all of them, or a seeded sample of `train.val_max_queries`."""
    ctx_idx, tgt_idx = prep.windows("val")
    cap = cfg.train.val_max_queries
    if cap and len(tgt_idx) > cap:
        keep = np.sort(np.random.default_rng(cfg.train.seed).choice(len(tgt_idx), cap, replace=False))
        ctx_idx, tgt_idx = ctx_idx[keep], tgt_idx[keep]
    return {"ctx_idx": ctx_idx, "tgt_idx": tgt_idx}


@torch.no_grad()
def validate(model: nn.Module, loss_fn: LVMLoss, prep, queries: dict, cfg: Config, device, n_neg: int,
             key_tower: bool, recall: bool = True, groups: np.ndarray | None = None) -> dict[str, float]:
    """Validation with evaluation's own code, so the two cannot disagree.

    val_cosine: mean cosine(prediction, true next vector). val_infonce: in-batch InfoNCE over shuffled
    batches of n_neg windows (the training batch), the same permutation every epoch. val_recall_at_k /
    val_mrr: `evaluate.predict` + `metrics.target_ranks` on evaluation's primary bank — every chunk of
    the corpus, each query's context chunks and their duplicates removed, ties counted against the model.
    `groups`: `metrics.duplicate_groups` of the bank (computed here when not given)."""
    from . import metrics as mt
    from .evaluate import model_bank, predict
    model.eval()
    vecs = prep.bank_vectors
    ctx_idx, tgt_idx = queries["ctx_idx"], queries["tgt_idx"]
    P = torch.from_numpy(predict(model, prep.contexts(ctx_idx), device)).to(device)  # (n, D')
    T = torch.from_numpy(_rows(vecs, tgt_idx)).to(device)  # (n, D)
    K = model.encode_bank(T).float() if key_tower else T  # (n, D')
    cos = torch.nn.functional.cosine_similarity(P, K, dim=-1)  # (n)
    meta = torch.from_numpy(np.asarray(prep.bank_keys)[tgt_idx]).to(device)  # (n, 2)
    perm = torch.from_numpy(np.random.default_rng(cfg.train.seed).permutation(len(P))).to(device)  # fixed shuffle
    nce, seen = 0.0, 0
    for s in range(0, len(P), n_neg):
        sel = perm[s:s + n_neg]
        if len(sel) < 2:
            break
        nce += float(loss_fn.contrastive(P[sel], K[sel], loss_fn.mask(meta[sel]))) * len(sel)
        seen += len(sel)
    out = {"val_cosine": float(cos.mean()), "val_infonce": nce / max(seen, 1)}
    if recall:
        groups = mt.duplicate_groups(vecs) if groups is None else groups
        bank = model_bank(model, vecs, device)  # (M, D')
        ranks = mt.target_ranks(mt.l2_normalize(P.cpu().numpy()), bank, tgt_idx, exclude_rows=ctx_idx,
                                groups=groups, device=device)["global"].excluded  # (n)
        out.update({f"val_recall_at_{k}": mt.recall_at_k(ranks, k) for k in VAL_KS})
        out.update(val_mrr=float(np.mean(1.0 / ranks)), n_val_queries=len(ranks), val_bank_size=len(bank))
    model.train()
    return out


# --------------------------------------------------------------------------- run-dir helpers
def _log(run_dir: Path, line: str, echo: bool = True) -> None:
    path = run_dir / "train.log"
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + f"{now_iso()} {line}\n")
    if echo:
        print(line, flush=True)


def _rng_state(aug: np.random.Generator) -> dict:
    st = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "numpy": json.dumps([st[0], st[1].tolist(), *st[2:]]), "python": json.dumps(random.getstate()),
            "aug": json.dumps(aug.bit_generator.state)}


def _set_rng_state(s: dict, aug: np.random.Generator) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    st = json.loads(s["numpy"])
    np.random.set_state((st[0], np.array(st[1], dtype=np.uint32), *st[2:]))
    py = json.loads(s["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    aug.bit_generator.state = json.loads(s["aug"])


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None or not math.isfinite(old):
        return math.isfinite(new)
    return new > old if HIGHER_IS_BETTER[metric] else new < old


def _progress_bar(total: int, desc: str, enabled: bool):
    return progress_bar(total=total, desc=desc, enabled=enabled, leave=False)


# --------------------------------------------------------------------------- the loop
def train(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> list[dict]:
    """Train `cfg.model` on the run's prepared data; returns the history (also in history.json).

    nproc > 1 outside torchrun launches `torchrun --nproc_per_node nproc -m lvmlib.train` and waits.
    Raises TrainingDiverged on a NaN/inf loss (last.pt keeps the last good epoch).
    """
    run_dir = Path(run_dir)
    with RunLock(run_dir, "training"):  # one trainer per run (shared with the runner that started us)
        if cfg.train.nproc > 1 and "LOCAL_RANK" not in os.environ:
            return _launch_torchrun(cfg, run_dir, resume, progress)
        return _Trainer(cfg, run_dir, resume, progress).run()


class _Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool, progress: bool):
        from .data import load_prepared
        from .model import build_model, count_parameters
        self.cfg, self.run_dir, self.resume, t = cfg, run_dir, resume, cfg.train
        self.ddp = "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
        cuda = t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available())
        if t.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device; use train.device=cpu")
        self.rank, self.world, local = 0, 1, int(os.environ.get("LOCAL_RANK", "0"))
        if self.ddp:
            dist.init_process_group("nccl" if cuda else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if t.threads:
            torch.set_num_threads(t.threads)
        elif self.ddp and not cuda:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.world))
        self.main = self.rank == 0
        self.progress = progress and self.main
        self.prep = load_prepared(run_dir)
        self.d_vec = int(self.prep.d_vec)
        ctx_idx, tgt_idx = self.prep.windows("train")
        if t.max_train_windows and len(tgt_idx) > t.max_train_windows:
            keep = np.sort(np.random.default_rng(t.seed).choice(len(tgt_idx), t.max_train_windows, replace=False))
            ctx_idx, tgt_idx = ctx_idx[keep], tgt_idx[keep]
        if len(tgt_idx) < 2:
            raise RunError(f"{run_dir}/data: {len(tgt_idx)} train windows; training needs at least 2")
        self.ctx_idx, self.tgt_idx = ctx_idx, tgt_idx
        # (M) bit-identical vectors share a group, as evaluation groups duplicates; the targets' groups mask
        # exact-duplicate targets out of each other's in-batch negatives
        self.groups = duplicate_groups(self.prep.bank_vectors)
        self.dup = self.groups[tgt_idx]  # (n)
        torch.manual_seed(t.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
        self.model = build_model(cfg.model, self.d_vec).to(self.device)
        self.n_params = count_parameters(self.model)
        self.key_tower = getattr(self.model, "retrieval_space", "bank") == "learned"
        d_out = (cfg.model.tower_dim or self.d_vec) if self.key_tower else self.d_vec  # D'
        self.loss_fn = LVMLoss(cfg.loss, d_out).to(self.device)
        self.val = val_queries(self.prep, cfg)
        from .gates import baseline_val_cosines, bars
        base = baseline_val_cosines(run_dir)
        self.best_baseline_cosine = max(base.values()) if base else None
        bars(cfg.gates, self.best_baseline_cosine)  # gates.against = best_baseline without baselines: fail now
        if cfg.loss.negatives == "bank":
            c_all, t_all = self.prep.windows("train")  # every chunk of the articles trained on (all windows)
            self.loss_fn.bank = BankNegatives(self.prep.bank_vectors, np.union1d(c_all.ravel(), t_all),
                                              self.groups, self.device)
        if len(self.val["tgt_idx"]) == 0:
            raise RunError(f"{run_dir}/data: no validation windows (val articles shorter than K+1 chunks?); "
                           "validation metrics and the epoch-2 gate need at least one")
        self.per_step = t.batch_size * t.grad_accum  # samples per optimizer step on this rank
        n_local = math.ceil(len(tgt_idx) / self.world)
        self.steps_per_epoch = max(1, n_local // self.per_step)
        self.aug_rng = np.random.default_rng([t.seed, self.rank])
        torch.manual_seed(t.seed + 1000 * self.rank + 1)  # dropout streams differ per rank

    # ----------------------------------------------------------------------- files
    def _progress_file(self, **fields) -> None:
        if self.main:
            path = self.run_dir / "train_progress.json"
            old = json.loads(path.read_text()) if path.is_file() else {}
            old.update(fields, updated_at=time.time())
            atomic_write_json(path, old)

    def _save(self, name: str, **extra) -> None:
        from .model import save_checkpoint
        save_checkpoint(self.run_dir / name, self.model, self.cfg, self.d_vec, n_params=self.n_params,
                        loss_state=self.loss_fn.state_dict(), **extra)

    # ----------------------------------------------------------------------- closed form
    def _closed_form(self) -> list[dict]:
        t0 = time.time()
        vecs = self.prep.bank_vectors
        self.model.fit(torch.from_numpy(_rows(vecs, self.ctx_idx)), torch.from_numpy(_rows(vecs, self.tgt_idx)))
        self.model.to(self.device)
        tr = validate(self.model, self.loss_fn, self.prep, {"ctx_idx": self.ctx_idx, "tgt_idx": self.tgt_idx},
                      self.cfg, self.device, self.per_step, False, recall=False)
        va = validate(self.model, self.loss_fn, self.prep, self.val, self.cfg, self.device, self.per_step, False,
                      groups=self.groups)
        lc, la = self.cfg.loss.lambda_con, self.cfg.loss.lambda_ar
        rec = {"epoch": 1, "train_loss": lc * tr["val_infonce"] + la * (1 - tr["val_cosine"]),
               "train_infonce": tr["val_infonce"], "train_ar_cosine": 1 - tr["val_cosine"], **va,
               "lr": 0.0, "closed_form": True, "decision": None, "decision_reason": "closed-form baseline: no training",
               "decision_stop": False, "stop_reason": "closed_form", "seconds": time.time() - t0}
        history = [rec]
        self._save("best.pt", epoch=1, metric=self.cfg.train.best_metric, value=rec.get(self.cfg.train.best_metric))
        self._save("last.pt", epoch=1, history=history, stop_reason="closed_form")
        atomic_write_json(self.run_dir / "history.json", history)
        _log(self.run_dir, f"closed-form {self.cfg.model.kind}: fitted on {len(self.tgt_idx)} windows; "
                           f"val_cosine {va['val_cosine']:.4f} val_recall_at_5 {va['val_recall_at_5']:.4f}")
        self._progress_file(state="finished", epoch=1, epochs=1)
        return history

    # ----------------------------------------------------------------------- main loop
    def run(self) -> list[dict]:
        try:
            if self.main:
                self._progress_file(pid=os.getpid(), host=platform.node(), state="running", started_at=time.time(),
                                    epochs=self.cfg.train.epochs, steps_per_epoch=self.steps_per_epoch, error=None,
                                    n_params=self.n_params, world=self.world)
            if not getattr(self.model, "trainable", True):
                return self._closed_form() if self.main else []
            return self._loop()
        except TrainingDiverged as exc:
            self._progress_file(state="diverged", error=str(exc))
            raise
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM via the runner: last.pt holds the last completed epoch
            self._progress_file(state="interrupted", error="interrupted (KeyboardInterrupt); resumable")
            raise
        except BaseException as exc:
            self._progress_file(state="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if self.ddp and dist.is_initialized():
                dist.destroy_process_group()

    def _loop(self) -> list[dict]:
        cfg, t = self.cfg, self.cfg.train
        from .model import param_groups
        groups = param_groups(self.model, t.weight_decay) + self.loss_fn.param_groups(t.weight_decay)
        opt = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
        total = t.epochs * self.steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, t.warmup_steps, total, t.min_lr_ratio))
        history: list[dict] = []
        state = {"best_value": None, "best_epoch": 0, "es_value": None, "bad_epochs": 0, "stop_reason": None}
        start = 1
        last = self.run_dir / "last.pt"
        if self.resume and last.is_file():
            from .model import load_checkpoint
            _, _, ck = load_checkpoint(last, model_cfg=cfg.model, d_vec=self.d_vec)
            self.model.load_state_dict(ck["model"])
            self.loss_fn.load_state_dict(ck["loss_state"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            if len(ck["rng"]) != self.world:
                raise RunError(f"{last}: saved by {len(ck['rng'])} process(es), resumed with {self.world}; "
                               f"resume with train.nproc={len(ck['rng'])}")
            _set_rng_state(ck["rng"][self.rank], self.aug_rng)
            history, state = list(ck["history"]), dict(ck["train_state"])
            start = int(ck["epoch"]) + 1
            if self.main:
                atomic_write_json(self.run_dir / "history.json", history)
                _log(self.run_dir, f"resume from {last} after epoch {ck['epoch']}")
        elif self.resume and self.main:
            _log(self.run_dir, f"resume requested but {last} does not exist: starting at epoch 1")
        if state["stop_reason"] in ("early_stopping", "decision_tree"):
            if self.main:
                _log(self.run_dir, f"nothing to resume: training already stopped ({state['stop_reason']})")
            return history
        key_tower, dev = self.key_tower, self.device
        enc = _Encode(self.model, key_tower, t.bf16 and dev.type == "cuda")
        net, sync = enc, None
        if self.ddp:
            net = nn.parallel.DistributedDataParallel(enc, device_ids=[dev] if dev.type == "cuda" else None,
                                                      broadcast_buffers=False)
            sync = lambda last_mb: contextlib.nullcontext() if last_mb else net.no_sync()  # noqa: E731
        bank_neg = self.loss_fn.bank is not None  # per-sample negatives: plain accumulation is exact
        cached = t.negatives == "effective_batch" and (t.grad_accum > 1 or self.world > 1) and not bank_neg
        sampler = DistributedSampler(range(len(self.tgt_idx)), num_replicas=self.world, rank=self.rank,
                                     shuffle=True, seed=t.seed)
        n_neg = self.per_step * self.world if cached or bank_neg else t.batch_size
        if self.main and start == 1:
            _log(self.run_dir, (
                f"start pid {os.getpid()} on {platform.node()} device {dev} x{self.world}; {cfg.model.kind} "
                f"{self.n_params:,} params; {len(self.tgt_idx)} train windows, {self.steps_per_epoch} steps/epoch, "
                f"effective batch {self.per_step * self.world} ("
                + (f"bank negatives: {len(self.loss_fn.bank):,} train chunks per query" if bank_neg else
                   'InfoNCE over all of it' if cached else 'InfoNCE per micro-batch')
                + f"); val ranks {len(self.val['tgt_idx'])} queries against all {len(self.groups):,} chunks"))
        vecs, keys_np = self.prep.bank_vectors, np.asarray(self.prep.bank_keys)
        params = [p for g in groups for p in g["params"]]
        for epoch in range(start, t.epochs + 1):
            t0 = time.time()
            sampler.set_epoch(epoch)
            order = np.fromiter(iter(sampler), dtype=np.int64)  # (n / W) this rank's windows
            sums = {"loss": 0.0, "infonce": 0.0, "ar_cosine": 0.0, "grad_norm": 0.0}
            bar = _progress_bar(self.steps_per_epoch, f"epoch {epoch}/{t.epochs}", self.progress)
            self._progress_file(epoch=epoch, step=0, epoch_started_at=t0)
            last_write, lr_used = time.time(), opt.param_groups[0]["lr"]
            self.model.train()
            for step in range(self.steps_per_epoch):
                sel = order[step * self.per_step:(step + 1) * self.per_step] if len(order) >= self.per_step else order
                micro = []
                for s in range(0, len(sel), t.batch_size):
                    w = sel[s:s + t.batch_size]
                    ctx, _ = augment(_rows(vecs, self.ctx_idx[w]), self.aug_rng, t.article_dropout, t.span_corruption,
                                     t.article_dropout_positions)
                    micro.append(MicroBatch(torch.from_numpy(ctx).to(dev),
                                            torch.from_numpy(_rows(vecs, self.tgt_idx[w])).to(dev),
                                            torch.from_numpy(keys_np[self.tgt_idx[w]]).to(dev),
                                            torch.from_numpy(self.dup[w]).to(dev),
                                            rows=(self.ctx_idx[w], self.tgt_idx[w]) if bank_neg else None))
                opt.zero_grad(set_to_none=True)
                if cached:  # pass 1 embeds through the bare module (no DDP hooks without a graph)
                    out = cached_step(net, self.loss_fn, micro, key_tower, sync, embed=enc)
                else:
                    out = direct_step(net, self.loss_fn, micro, key_tower, sync)
                if self.ddp:
                    v = torch.tensor([out["loss"], out["infonce"], out["ar_cosine"]], device=dev)
                    dist.all_reduce(v)
                    out = dict(zip(("loss", "infonce", "ar_cosine"), (v / self.world).tolist()))
                    for p in self.loss_fn.parameters():  # outside DDP: average by hand
                        if p.grad is not None:
                            dist.all_reduce(p.grad)
                            p.grad /= self.world
                if not math.isfinite(out["loss"]):
                    bar.close()
                    self._diverged(epoch, step, out["loss"])
                gn = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else float("inf"))
                if not math.isfinite(float(gn)):
                    bar.close()
                    self._diverged(epoch, step, out["loss"], what=f"gradient norm is {float(gn)}")
                lr_used = opt.param_groups[0]["lr"]
                opt.step()
                sched.step()
                for k in ("loss", "infonce", "ar_cosine"):
                    sums[k] += out[k]
                sums["grad_norm"] += float(gn)
                bar.update(1)
                bar.set_postfix(loss=f"{out['loss']:.4f}", refresh=False)
                if time.time() - last_write > PROGRESS_EVERY_S:
                    self._progress_file(step=step + 1)
                    last_write = time.time()
            bar.close()
            train_s = time.time() - t0
            n = self.steps_per_epoch
            rec: dict[str, Any] = {"epoch": epoch, "train_loss": sums["loss"] / n, "train_infonce": sums["infonce"] / n,
                                   "train_ar_cosine": sums["ar_cosine"] / n}
            stop, rngs = False, [_rng_state(self.aug_rng)]
            if self.ddp:  # every rank's RNG streams go into last.pt, so a resume replays them all
                rngs = [None] * self.world
                dist.all_gather_object(rngs, _rng_state(self.aug_rng))
            if self.main:
                t1 = time.time()
                rec.update(validate(self.model, self.loss_fn, self.prep, self.val, cfg, dev, n_neg, key_tower,
                                    groups=self.groups))
                rec.update(lr=lr_used, temperature=self.loss_fn.temperature, grad_norm=sums["grad_norm"] / n,
                           steps=epoch * n, train_seconds=train_s, val_seconds=time.time() - t1,
                           seq_per_s=min(len(order), n * self.per_step) * self.world / train_s)
                stop = self._after_epoch(rec, history, state, opt, sched, rngs)
                rec["seconds"] = time.time() - t0
                atomic_write_json(self.run_dir / "history.json", history)
            if self.ddp:
                flag = torch.tensor([int(stop)], device=dev)
                dist.broadcast(flag, 0)
                stop = bool(flag.item())
            if stop:
                break
        if self.main:
            if state["stop_reason"] is None:
                state["stop_reason"] = "completed"
            if history:
                history[-1]["stop_reason"] = state["stop_reason"]
                atomic_write_json(self.run_dir / "history.json", history)
            best = history[state["best_epoch"] - 1] if state["best_epoch"] else {}
            _log(self.run_dir, f"done: {len(history)} epoch(s), stop reason {state['stop_reason']}; best "
                               f"{t.best_metric} {best.get(t.best_metric, float('nan')):.4f} at epoch {state['best_epoch']}")
            self._progress_file(state="finished")
        return history

    def _after_epoch(self, rec: dict, history: list, state: dict, opt, sched, rngs: list) -> bool:
        """Best/early-stop bookkeeping, the decision tree, checkpoints; True = stop training."""
        t, g = self.cfg.train, self.cfg.gates
        history.append(rec)
        rec["is_best"] = _better(t.best_metric, rec[t.best_metric], state["best_value"])
        if rec["is_best"]:
            state["best_value"], state["best_epoch"] = rec[t.best_metric], rec["epoch"]
        if _better(t.early_stop_metric, rec[t.early_stop_metric], state["es_value"]):
            state["es_value"], state["bad_epochs"] = rec[t.early_stop_metric], 0
        else:
            state["bad_epochs"] += 1
        rec["best_epoch"], rec["bad_epochs"] = state["best_epoch"], state["bad_epochs"]
        stop = False
        if t.decision_tree:
            act = in_loop_action(history, g, self.best_baseline_cosine)
            rec.update(decision=act["decision"], decision_reason=act["reason"], decision_stop=bool(act["stop"]))
            if act["stop"]:
                stop, state["stop_reason"] = True, "decision_tree"
        else:
            rec.update(decision=None, decision_reason="decision tree off (train.decision_tree: false)",
                       decision_stop=False)
        if not stop and state["bad_epochs"] >= t.patience:
            stop, state["stop_reason"] = True, "early_stopping"
        if stop:
            rec["stop_reason"] = state["stop_reason"]
        if rec["is_best"]:
            self._save("best.pt", epoch=rec["epoch"], metric=t.best_metric, value=rec[t.best_metric])
        self._save("last.pt", epoch=rec["epoch"], optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                   rng=rngs, history=history, train_state=dict(state))
        line = " ".join(f"{k} {rec[k]:.4f}" for k in ("train_loss", "val_cosine", "val_infonce", "val_recall_at_5",
                                                          "val_mrr"))
        _log(self.run_dir, f"epoch {rec['epoch']}: {line} lr {rec['lr']:.2e} {rec['seq_per_s']:.0f} seq/s"
                           f"{' *best*' if rec['is_best'] else ''}; {rec['decision_reason']}"
                           + (f"; STOP ({state['stop_reason']})" if stop else ""), echo=self.progress)
        return stop

    def _diverged(self, epoch: int, step: int, loss: float, what: str = "") -> None:
        last = self.run_dir / "last.pt"
        kept = f"last good checkpoint kept: {last} (epoch {epoch - 1})" if epoch > 1 and last.is_file() else \
            "no checkpoint was written yet (it diverged in epoch 1)"
        msg = (f"training diverged: {what or f'loss is {loss}'} at epoch {epoch}, optimizer step {step + 1}; {kept}. "
               "Try a lower train.lr, a smaller train.grad_clip or check the data for NaN/inf vectors.")
        if self.main:
            _log(self.run_dir, "ERROR " + msg)
        raise TrainingDiverged(msg)


# --------------------------------------------------------------------------- torchrun
def _launch_torchrun(cfg: Config, run_dir: Path, resume: bool, progress: bool) -> list[dict]:
    """Run this module under torchrun with cfg.train.nproc processes; stream its output; history."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / ".train_launch.yaml"  # the exact config (overrides included) for the workers
    atomic_write_text(cfg_path, dump_config(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.train.nproc}",
           "-m", "lvmlib.train", str(run_dir), "--params", str(cfg_path)]
    cmd += ["--resume"] * resume + ["--no-progress"] * (not progress)
    print("launching:", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:  # relayed so the notebook / terminal sees the workers
        print(line, end="", flush=True)
    rc = proc.wait()
    cfg_path.unlink(missing_ok=True)
    if rc != 0:
        prog = _read(run_dir / "train_progress.json") or {}
        if prog.get("state") == "diverged":
            raise TrainingDiverged(prog.get("error"))
        raise RuntimeError(f"torchrun exited with status {rc}: {prog.get('error') or 'see the output above'}"
                           f" (log: {run_dir / 'train.log'})")
    return read_json(run_dir / "history.json")


def main(argv: list[str] | None = None) -> int:
    """`python -m lvmlib.train RUN_DIR --params YAML [--resume]` (what torchrun runs on every rank)."""
    ap = argparse.ArgumentParser(prog="python -m lvmlib.train")
    ap.add_argument("run_dir")
    ap.add_argument("--params", default=None, help="params YAML (default RUN_DIR/params.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    cfg = load_config(a.params or Path(a.run_dir) / "params.yaml", a.overrides)
    train(cfg, a.run_dir, resume=a.resume, progress=not a.no_progress)
    return 0


# --------------------------------------------------------------------------- status and summary
def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _alive(prog: dict) -> bool | None:
    """Is the training process running? None when it ran on another host."""
    if not prog or not prog.get("pid"):
        return None
    if prog.get("host") != platform.node():
        return None
    return pid_alive(int(prog["pid"])) and prog.get("state") == "running"


def _hms(sec: float) -> str:
    sec = int(max(0, sec))
    return f"{sec // 3600:d}:{sec // 60 % 60:02d}:{sec % 60:02d}"


def status(run_dir: str | Path) -> str:
    """A text report of a run's training, safe to call while it trains (files are written atomically):
    current epoch, epoch-2 verdict, history table, sequences/s, ETA, whether the training pid is alive."""
    from .gates import epoch_gate
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    history = _read(run_dir / "history.json")
    if history is None and (run_dir / "history.json").exists():
        raise RunError(f"{run_dir / 'history.json'}: corrupt (not valid JSON — truncated?); last.pt holds the "
                       "history of its epoch: `python -m lvmlib run --resume` rewrites it")
    history = history or []
    prog = _read(run_dir / "train_progress.json") or {}
    try:
        cfg = load_config(run_dir / "params.yaml")
    except Exception:  # a run dir without params (or with a broken one) still gets a report
        cfg = Config()
    epochs = prog.get("epochs") or cfg.train.epochs
    live, holder = lock_state(run_dir)  # the run's lock says whether any process still runs it
    alive = False if live is False else _alive(prog)
    state = prog.get("state", "not started" if not history else "unknown")
    proc = {True: f"alive (pid {prog.get('pid')})", False: f"not running (pid {prog.get('pid')})",
            None: f"unknown (pid {prog.get('pid')} on {prog.get('host')})" if prog.get("pid") else "no training process"}
    lines = [f"run {run_dir}", f"training: {state}; process {proc[alive]}"]
    manifest = _read(run_dir / "manifest.json") or {}
    if live:
        lines.insert(1, f"run status: {manifest.get('status', '?')}; live: {describe_holder(holder)}")
    elif manifest.get("status") == "running" or state == "running":
        lines.insert(1, f"run status: {manifest.get('status', '?')} in manifest.json, but no process holds the run "
                        f"(last {describe_holder(holder) if holder else 'holder unknown'}): it was killed or crashed; "
                        f"continue with: python -m lvmlib run --resume {run_dir}")
    elif manifest.get("status"):
        lines.insert(1, f"run status: {manifest['status']}" + (f" — {manifest['failure']}" if manifest.get("failure") else ""))
    if prog.get("error"):
        lines.append(f"error: {prog['error']}")
    done = len(history)
    if alive:
        cur, step, spe = prog.get("epoch", done + 1), prog.get("step", 0), prog.get("steps_per_epoch", 0)
        lines.append(f"epoch {cur}/{epochs} in progress (step {step}/{spe} at last update, "
                     f"{_hms(time.time() - prog.get('updated_at', time.time()))} ago)")
        per_epoch = np.mean([r["seconds"] for r in history]) if history else None
        if per_epoch is None and step and prog.get("epoch_started_at"):
            per_epoch = (prog["updated_at"] - prog["epoch_started_at"]) * spe / step
        if per_epoch:
            left = (epochs - done) * per_epoch - (time.time() - prog.get("epoch_started_at", time.time()))
            lines.append(f"ETA <= {_hms(left)} for the remaining {epochs - done} epoch(s) (early stopping or the "
                         "decision tree may end it sooner)")
    else:
        lines.append(f"epochs done: {done}/{epochs}" + (f", stop reason {history[-1].get('stop_reason')}"
                                                        if history and history[-1].get("stop_reason") else ""))
    from .gates import baseline_val_cosines
    base = baseline_val_cosines(run_dir)
    try:
        gate = epoch_gate(history, cfg.gates, max(base.values()) if base else None)
    except ValueError as exc:
        gate = {"decision": None, "reason": str(exc)}
    lines.append(f"epoch-{cfg.gates.epoch} gate: {gate['decision'] or 'pending'} — {gate['reason']}")
    if history:
        rates = [r["seq_per_s"] for r in history if r.get("seq_per_s")]
        if rates:
            lines.append(f"sequences/s: last {rates[-1]:.0f}, mean {np.mean(rates):.0f}")
        cols = ("epoch", "train_loss", "train_infonce", "train_ar_cosine", "val_cosine", "val_infonce",
                "val_recall_at_5", "lr", "seq_per_s", "seconds")
        lines.append(" ".join(f"{c:>15}" for c in cols) + "  decision")
        for r in history:
            cells = []
            for c in cols:
                v = r.get(c)
                cells.append(f"{'':>15}" if v is None else f"{v:>15d}" if isinstance(v, int) else
                             f"{v:>15.2e}" if c == "lr" else f"{v:>15.1f}" if c in ("seq_per_s", "seconds")
                             else f"{v:>15.4f}")
            lines.append(" ".join(cells) + f"  {r.get('decision') or ''}{' *' if r.get('is_best') else ''}"
                         + (" STOP" if r.get("decision_stop") else ""))
    return "\n".join(lines)


def training_summary(run_dir: str | Path) -> dict[str, Any]:
    """Headline numbers of a finished training step (for 02_train's summary and record cells)."""
    run_dir = Path(run_dir)
    history = read_json(run_dir / "history.json")
    prog = _read(run_dir / "train_progress.json") or {}
    cfg = load_config(run_dir / "params.yaml") if (run_dir / "params.yaml").is_file() else None
    metric = cfg.train.best_metric if cfg else "val_cosine"
    best = next((r for r in reversed(history) if r.get("is_best")), history[-1] if history else {})
    n_params = prog.get("n_params")
    if n_params is None and (run_dir / "best.pt").is_file():
        from .model import read_checkpoint
        n_params = read_checkpoint(run_dir / "best.pt").get("n_params")
    return {"n_params": n_params, "epochs_trained": len(history),
            "epochs_planned": prog.get("epochs") or (cfg.train.epochs if cfg else None),
            "best_metric": metric, "best_epoch": best.get("epoch"), "best_value": best.get(metric),
            "best_val_cosine": max((r["val_cosine"] for r in history), default=None),
            "final_val_cosine": history[-1]["val_cosine"] if history else None,
            "final_val_recall_at_5": history[-1].get("val_recall_at_5") if history else None,
            "stop_reason": history[-1].get("stop_reason") if history else None,
            "decision": next((r.get("decision") for r in reversed(history) if r.get("decision")), None),
            "mean_seq_per_s": float(np.mean([r["seq_per_s"] for r in history if r.get("seq_per_s")]))
            if any(r.get("seq_per_s") for r in history) else None,
            "train_seconds": float(sum(r.get("seconds", 0.0) for r in history))}


if __name__ == "__main__":
    sys.exit(main())
