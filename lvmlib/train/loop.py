"""The training loop: optimizer, restore, epochs and steps, checkpoints, the gate, resume and DDP.

The training loop: AdamW + warmup/cosine, gradient-cache InfoNCE, per-epoch validation, early stopping,
best/last checkpoints, the gate's decision tree in the loop, resume, DDP. Its pieces live beside it:
`recipe` (lr schedule, augmentation, RNG state), `validation` (the per-epoch numbers), `launch`
(torchrun for train.nproc > 1), `lvmlib.train.status` (`python -m lvmlib status`, the training summary).

Shapes: B micro-batch, A grad-accum, W DDP ranks, L context length (K), D vector width, D' retrieval
width (two_tower), M bank rows.

Files (rank 0 only, all atomic): history.json (one record per epoch, rewritten every epoch),
best.pt / last.pt (`lvmlib.model.checkpoint.save_checkpoint`; last.pt also carries optimizer, scheduler, RNG
states, early-stop counters and the history, so `resume=True` continues exactly; the last.pt it replaces
is kept as last.prev.pt, which a resume falls back on when last.pt is unreadable), train.log (human
log, appended line by line through `logging`), train_progress.json (pid, epoch, step: what `status` reads while training runs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DistributedSampler

from lvmlib.core.config import Config, ConfigError
from lvmlib.core.errors import RunError, TrainingDiverged
from lvmlib.core.runs import RunLock, atomic_write_json, now_iso, progress_bar
from lvmlib.metrics import duplicate_groups, resolve_device
from lvmlib.train.gates import in_loop_action
from lvmlib.train.losses import BankNegatives, LVMLoss, MicroBatch, cached_step, direct_step
from lvmlib.train.recipe import augment, lr_factor, rng_state, set_rng_state
from lvmlib.train.validation import val_curve, val_queries, validate

HIGHER_IS_BETTER = {
    "val_cosine": True,
    "val_recall_at_5": True,
    "val_mrr": True,
    "val_curve_recall_at_5": True,
    "val_infonce": False,
    "train_loss": False,
}
TIMING_KEYS = ("seconds", "train_seconds", "val_seconds", "seq_per_s")  # differ between identical runs
PROGRESS_EVERY_S = 10.0


# --------------------------------------------------------------------------- pieces (tested alone)
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


# --------------------------------------------------------------------------- run-dir helpers
# train.log: one line per event, appended through `logging` while a trainer runs (`_train_log`).
_LOG = logging.getLogger("lvmlib.train")
_LOG.setLevel(logging.INFO)
_LOG.propagate = False  # the file is the record; the terminal gets print()'s copy


@contextlib.contextmanager
def _train_log(run_dir: Path, enabled: bool):
    """Append `_log` lines to run_dir/train.log while the block runs (rank 0 only: `enabled`)."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(run_dir / "train.log", mode="a", encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(stamp)s %(message)s"))
    _LOG.addHandler(handler)
    try:
        yield
    finally:
        _LOG.removeHandler(handler)
        handler.close()


def last_epoch(t) -> int:
    """The last epoch this run trains: train.stop_epoch when set (the schedule still spans train.epochs)."""
    return min(t.stop_epoch or t.epochs, t.epochs)


def _log(line: str, echo: bool = True) -> None:
    _LOG.info(line, extra={"stamp": now_iso()})
    if echo:
        print(line, flush=True)


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
            from lvmlib.train.launch import launch_torchrun

            return launch_torchrun(cfg, run_dir, resume, progress)
        return _Trainer(cfg, run_dir, resume, progress).run()


class _Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool, progress: bool):
        from lvmlib.data.prepare import load_prepared
        from lvmlib.model.models import build_model, count_parameters

        self.cfg, self.run_dir, self.resume, t = cfg, run_dir, resume, cfg.train
        self.ddp = "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
        cuda = resolve_device(t.device).type == "cuda"  # BackendError for train.device=cuda without a GPU
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
        if getattr(self.model, "trainable", True) and t.batch_size > len(tgt_idx):  # a closed form has no batches
            raise ConfigError(
                f"{run_dir / 'params.yaml'}: key 'train.batch_size' = {t.batch_size}: more than the run's "
                f"{len(tgt_idx)} train windows; use train.batch_size <= {len(tgt_idx)} (or more training data)"
            )
        self.key_tower = getattr(self.model, "retrieval_space", "bank") == "learned"
        d_out = (cfg.model.tower_dim or self.d_vec) if self.key_tower else self.d_vec  # D'
        self.loss_fn = LVMLoss(cfg.loss, d_out).to(self.device)
        self.val = val_queries(self.prep, cfg)
        self.curve = val_curve(self.prep, cfg, self.val)  # None without distractors: no val_curve_recall_at_5
        from lvmlib.train.gates import bars, baseline_val_cosines

        base = baseline_val_cosines(run_dir)
        self.best_baseline_cosine = max(base.values()) if base else None
        bars(cfg.gates, self.best_baseline_cosine)  # gates.against = best_baseline without baselines: fail now
        if cfg.loss.negatives == "bank":
            c_all, t_all = self.prep.windows("train")  # every chunk of the articles trained on (all windows)
            self.loss_fn.bank = BankNegatives(
                self.prep.bank_vectors,
                np.union1d(c_all.ravel(), t_all),
                self.groups,
                self.device,
                dtype=cfg.loss.bank_dtype,
            )
        if len(self.val["tgt_idx"]) == 0:
            raise RunError(
                f"{run_dir}/data: no validation windows (val articles shorter than K+1 chunks?); "
                "validation metrics and the epoch-2 gate need at least one"
            )
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
        from lvmlib.model.checkpoint import save_checkpoint

        save_checkpoint(
            self.run_dir / name,
            self.model,
            self.cfg,
            self.d_vec,
            n_params=self.n_params,
            loss_state=self.loss_fn.state_dict(),
            **extra,
        )

    # ----------------------------------------------------------------------- closed form
    def _closed_form(self) -> list[dict]:
        t0 = time.time()
        vecs = self.prep.bank_vectors
        self.model.fit(torch.from_numpy(_rows(vecs, self.ctx_idx)), torch.from_numpy(_rows(vecs, self.tgt_idx)))
        self.model.to(self.device)
        tr = validate(
            self.model,
            self.loss_fn,
            self.prep,
            {"ctx_idx": self.ctx_idx, "tgt_idx": self.tgt_idx},
            self.cfg,
            self.device,
            self.per_step,
            False,
            recall=False,
        )
        va = validate(
            self.model,
            self.loss_fn,
            self.prep,
            self.val,
            self.cfg,
            self.device,
            self.per_step,
            False,
            groups=self.groups,
            curve=self.curve,
        )
        lc, la = self.cfg.loss.lambda_con, self.cfg.loss.lambda_ar
        rec = {
            "epoch": 1,
            "train_loss": lc * tr["val_infonce"] + la * (1 - tr["val_cosine"]),
            "train_infonce": tr["val_infonce"],
            "train_ar_cosine": 1 - tr["val_cosine"],
            **va,
            "lr": 0.0,
            "closed_form": True,
            "decision": None,
            "decision_reason": "closed-form baseline: no training",
            "decision_stop": False,
            "stop_reason": "closed_form",
            "seconds": time.time() - t0,
        }
        history = [rec]
        self._save("best.pt", epoch=1, metric=self.cfg.train.best_metric, value=rec.get(self.cfg.train.best_metric))
        self._save("last.pt", epoch=1, history=history, stop_reason="closed_form")
        atomic_write_json(self.run_dir / "history.json", history)
        _log(
            f"closed-form {self.cfg.model.kind}: fitted on {len(self.tgt_idx)} windows; "
            f"val_cosine {va['val_cosine']:.4f} val_recall_at_5 {va['val_recall_at_5']:.4f}"
        )
        self._progress_file(state="finished", epoch=1, epochs=1)
        return history

    # ----------------------------------------------------------------------- main loop
    def run(self) -> list[dict]:
        with _train_log(self.run_dir, self.main):
            return self._run()

    def _run(self) -> list[dict]:
        try:
            if self.main:
                self._progress_file(
                    pid=os.getpid(),
                    host=platform.node(),
                    state="running",
                    started_at=time.time(),
                    epochs=last_epoch(self.cfg.train),
                    steps_per_epoch=self.steps_per_epoch,
                    error=None,
                    n_params=self.n_params,
                    world=self.world,
                )
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
        """Optimizer, resume, then epochs: each one steps over this rank's windows (`_epoch`), then
        validates, books the best/early-stop state, runs the decision tree and saves (`_end_epoch`)."""
        t = self.cfg.train
        opt, sched, params = self._optimizer()
        history, state, start = self._restore(opt, sched)
        if state["stop_reason"] in ("early_stopping", "decision_tree"):
            if self.main:
                _log(f"nothing to resume: training already stopped ({state['stop_reason']})")
            return history
        self._prepare_steps()
        if self.main and start == 1:
            _log(self._start_line())
        for epoch in range(start, last_epoch(t) + 1):
            t0 = time.time()
            sums, n_seen, lr_used = self._epoch(epoch, opt, sched, params)
            if self._end_epoch(epoch, t0, sums, n_seen, lr_used, history, state, opt, sched):
                break
        if self.main:
            self._finish(history, state)
        return history

    # ----------------------------------------------------------------------- the loop's steps
    def _optimizer(self):
        """AdamW over the model's and the loss's parameter groups, warmup + cosine schedule per step."""
        from lvmlib.model.models import param_groups

        t = self.cfg.train
        groups = param_groups(self.model, t.weight_decay) + self.loss_fn.param_groups(t.weight_decay)
        opt = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
        total = t.epochs * self.steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, t.warmup_steps, total, t.min_lr_ratio))
        return opt, sched, [p for g in groups for p in g["params"]]

    def _restore(self, opt, sched) -> tuple[list[dict], dict[str, Any], int]:
        """(history, train state, first epoch): from last.pt when resuming, else a fresh start."""
        history: list[dict] = []
        state = {"best_value": None, "best_epoch": 0, "es_value": None, "bad_epochs": 0, "stop_reason": None}
        last = self.run_dir / "last.pt"
        src = self._resume_source() if self.resume else None
        if src is not None:
            from lvmlib.model.checkpoint import load_checkpoint

            last = src
            _, _, ck = load_checkpoint(last, model_cfg=self.cfg.model, d_vec=self.d_vec)
            self.model.load_state_dict(ck["model"])
            self.loss_fn.load_state_dict(ck["loss_state"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            if len(ck["rng"]) != self.world:
                raise RunError(
                    f"{last}: saved by {len(ck['rng'])} process(es), resumed with {self.world}; "
                    f"resume with train.nproc={len(ck['rng'])}"
                )
            set_rng_state(ck["rng"][self.rank], self.aug_rng)
            history, state = list(ck["history"]), dict(ck["train_state"])
            if self.main:
                atomic_write_json(self.run_dir / "history.json", history)
                if self.passed_over:  # e.g. "last.pt: not a readable checkpoint (truncated or corrupted?)"
                    why = self.passed_over[0].split(": ", 1)[-1]
                    what = "missing" if why == "not found" else "unreadable (truncated?)"
                    _log(f"[lvm-study] warning: last.pt {what}: resuming from {last.name} (epoch {ck['epoch']})")
                _log(f"resume from {last} after epoch {ck['epoch']}")
                self._record_resume(last, int(ck["epoch"]))
            return history, state, int(ck["epoch"]) + 1
        if self.resume and self.main:
            _log(f"resume requested but {last} does not exist: starting at epoch 1")
        return history, state, 1

    def _resume_source(self) -> Path | None:
        """The checkpoint to resume from (None: nothing saved yet); an unreadable last.pt falls back on
        last.prev.pt, then best.pt (`checkpoint.resume_checkpoint`); `_restore` says so in one line."""
        from lvmlib.model.checkpoint import resume_checkpoint

        src, self.passed_over = resume_checkpoint(self.run_dir)
        return src

    def _record_resume(self, src: Path, epoch: int) -> None:
        """manifest.json (when the run has one): `resumed_from` = this resume's checkpoint; a fallback is
        also appended to `events`, so a later resume does not hide it."""
        from lvmlib.core.runs import update_manifest

        if not (self.run_dir / "manifest.json").is_file():
            return
        rec = {"checkpoint": src.name, "epoch": epoch, "at": now_iso(), "passed_over": list(self.passed_over)}

        def change(m: dict) -> None:
            m["resumed_from"] = rec
            if rec["passed_over"]:
                m.setdefault("events", []).append({"event": "checkpoint_fallback", **rec})

        update_manifest(self.run_dir, change)

    def _prepare_steps(self) -> None:
        """The module each step runs (DDP-wrapped on several ranks), how negatives are gathered, the sampler."""
        t, dev = self.cfg.train, self.device
        self.enc = _Encode(self.model, self.key_tower, t.bf16 and dev.type == "cuda")
        self.net, self.sync = self.enc, None
        if self.ddp:
            net = self.net = nn.parallel.DistributedDataParallel(
                self.enc, device_ids=[dev] if dev.type == "cuda" else None, broadcast_buffers=False
            )
            self.sync = lambda last_mb: contextlib.nullcontext() if last_mb else net.no_sync()
        self.bank_neg = self.loss_fn.bank is not None  # per-sample negatives: plain accumulation is exact
        self.cached = t.negatives == "effective_batch" and (t.grad_accum > 1 or self.world > 1) and not self.bank_neg
        self.sampler = DistributedSampler(
            range(len(self.tgt_idx)), num_replicas=self.world, rank=self.rank, shuffle=True, seed=t.seed
        )
        self.n_neg = self.per_step * self.world if self.cached or self.bank_neg else t.batch_size

    def _start_line(self) -> str:
        kind = (
            (
                f"bank negatives: {len(self.loss_fn.bank):,} train chunks per query"
                if not 0 < self.cfg.loss.bank_sample < len(self.loss_fn.bank)
                else f"bank negatives: {self.cfg.loss.bank_sample:,} of {len(self.loss_fn.bank):,} train chunks, "
                "drawn afresh every step"
            )
            if self.bank_neg
            else "InfoNCE over all of it"
            if self.cached
            else "InfoNCE per micro-batch"
        )
        return (
            f"start pid {os.getpid()} on {platform.node()} device {self.device} x{self.world}; "
            f"{self.cfg.model.kind} {self.n_params:,} params; {len(self.tgt_idx)} train windows, "
            f"{self.steps_per_epoch} steps/epoch, effective batch {self.per_step * self.world} ({kind}); "
            f"val ranks {len(self.val['tgt_idx'])} queries against all {len(self.groups):,} chunks"
            + (f" and the val curve bank of {len(self.curve['bank']):,}" if self.curve else "")
        )

    def _epoch(self, epoch: int, opt, sched, params: list) -> tuple[dict[str, float], int, float]:
        """One pass over this rank's windows -> (summed step losses and grad norms, windows seen, lr)."""
        t = self.cfg.train
        self.sampler.set_epoch(epoch)
        order = np.fromiter(iter(self.sampler), dtype=np.int64)  # (n / W) this rank's windows
        sums = {"loss": 0.0, "infonce": 0.0, "ar_cosine": 0.0, "grad_norm": 0.0}
        bar = _progress_bar(self.steps_per_epoch, f"epoch {epoch}/{last_epoch(t)}", self.progress)
        self._progress_file(epoch=epoch, step=0, epoch_started_at=time.time())
        last_write, lr_used = time.time(), opt.param_groups[0]["lr"]
        self.model.train()
        for step in range(self.steps_per_epoch):
            sel = order[step * self.per_step : (step + 1) * self.per_step] if len(order) >= self.per_step else order
            opt.zero_grad(set_to_none=True)
            if self.bank_neg:  # loss.bank_sample: this step's uniform subset of the train bank (all rows at 0)
                self.loss_fn.bank.draw(self.aug_rng, self.cfg.loss.bank_sample)
            out = self._step(self._micro_batches(sel))
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
        return sums, len(order), lr_used

    def _micro_batches(self, sel: np.ndarray) -> list[MicroBatch]:
        """The optimizer step's windows `sel` in micro-batches of train.batch_size, augmented, on the device."""
        t, dev, vecs = self.cfg.train, self.device, self.prep.bank_vectors
        keys = np.asarray(self.prep.bank_keys)
        micro = []
        for s in range(0, len(sel), t.batch_size):
            w = sel[s : s + t.batch_size]
            ctx, _ = augment(
                _rows(vecs, self.ctx_idx[w]),
                self.aug_rng,
                t.article_dropout,
                t.span_corruption,
                t.article_dropout_positions,
            )  # (b, K, D)
            micro.append(
                MicroBatch(
                    torch.from_numpy(ctx).to(dev),
                    torch.from_numpy(_rows(vecs, self.tgt_idx[w])).to(dev),  # (b, D)
                    torch.from_numpy(keys[self.tgt_idx[w]]).to(dev),  # (b, 2)
                    torch.from_numpy(self.dup[w]).to(dev),  # (b)
                    rows=(self.ctx_idx[w], self.tgt_idx[w]) if self.bank_neg else None,
                )
            )
        return micro

    def _step(self, micro: list[MicroBatch]) -> dict[str, float]:
        """Forward and backward of one optimizer step (gradients left in place); the mean losses over ranks."""
        if self.cached:  # pass 1 embeds through the bare module (no DDP hooks without a graph)
            out = cached_step(self.net, self.loss_fn, micro, self.key_tower, self.sync, embed=self.enc)
        else:
            out = direct_step(self.net, self.loss_fn, micro, self.key_tower, self.sync)
        if self.ddp:
            v = torch.tensor([out["loss"], out["infonce"], out["ar_cosine"]], device=self.device)
            dist.all_reduce(v)
            out = dict(zip(("loss", "infonce", "ar_cosine"), (v / self.world).tolist()))
            for p in self.loss_fn.parameters():  # outside DDP: average by hand
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        return out

    def _end_epoch(
        self,
        epoch: int,
        t0: float,
        sums: dict[str, float],
        n_seen: int,
        lr_used: float,
        history: list,
        state: dict,
        opt,
        sched,
    ) -> bool:
        """The epoch's record (rank 0 validates and saves), then every rank learns whether to stop."""
        train_s, n = time.time() - t0, self.steps_per_epoch
        rec: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": sums["loss"] / n,
            "train_infonce": sums["infonce"] / n,
            "train_ar_cosine": sums["ar_cosine"] / n,
        }
        stop, rngs = False, [rng_state(self.aug_rng)]
        if self.ddp:  # every rank's RNG streams go into last.pt, so a resume replays them all
            rngs = [None] * self.world
            dist.all_gather_object(rngs, rng_state(self.aug_rng))
        if self.main:
            t1 = time.time()
            rec.update(
                validate(
                    self.model,
                    self.loss_fn,
                    self.prep,
                    self.val,
                    self.cfg,
                    self.device,
                    self.n_neg,
                    self.key_tower,
                    groups=self.groups,
                    curve=self.curve,
                )
            )
            rec.update(
                lr=lr_used,
                temperature=self.loss_fn.temperature,
                grad_norm=sums["grad_norm"] / n,
                steps=epoch * n,
                train_seconds=train_s,
                val_seconds=time.time() - t1,
                seq_per_s=min(n_seen, n * self.per_step) * self.world / train_s,
            )
            rec["seconds"] = time.time() - t0  # before the checkpoint, whose history a resume restores
            stop = self._after_epoch(rec, history, state, opt, sched, rngs)
            atomic_write_json(self.run_dir / "history.json", history)
        if self.ddp:
            flag = torch.tensor([int(stop)], device=self.device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        return stop

    def _finish(self, history: list, state: dict) -> None:
        t = self.cfg.train
        if state["stop_reason"] is None:
            state["stop_reason"] = "stop_epoch" if last_epoch(t) < t.epochs else "completed"
        if history:
            history[-1]["stop_reason"] = state["stop_reason"]
            atomic_write_json(self.run_dir / "history.json", history)
        best = history[state["best_epoch"] - 1] if state["best_epoch"] else {}
        _log(
            f"done: {len(history)} epoch(s), stop reason {state['stop_reason']}; best "
            f"{t.best_metric} {best.get(t.best_metric, float('nan')):.4f} at epoch {state['best_epoch']}"
        )
        self._progress_file(state="finished")

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
            rec.update(
                decision=None, decision_reason="decision tree off (train.decision_tree: false)", decision_stop=False
            )
        if not stop and state["bad_epochs"] >= t.patience:
            stop, state["stop_reason"] = True, "early_stopping"
        if stop:
            rec["stop_reason"] = state["stop_reason"]
        if rec["is_best"]:
            self._save("best.pt", epoch=rec["epoch"], metric=t.best_metric, value=rec[t.best_metric])
        self._save(
            "last.pt",
            keep_previous=True,
            epoch=rec["epoch"],
            optimizer=opt.state_dict(),
            scheduler=sched.state_dict(),
            rng=rngs,
            history=history,
            train_state=dict(state),
        )
        line = " ".join(
            f"{k} {rec[k]:.4f}" for k in ("train_loss", "val_cosine", "val_infonce", "val_recall_at_5", "val_mrr")
        )
        _log(
            f"epoch {rec['epoch']}: {line} lr {rec['lr']:.2e} {rec['seq_per_s']:.0f} seq/s"
            f"{' *best*' if rec['is_best'] else ''}; {rec['decision_reason']}"
            + (f"; STOP ({state['stop_reason']})" if stop else ""),
            echo=self.progress,
        )
        return stop

    def _diverged(self, epoch: int, step: int, loss: float, what: str = "") -> None:
        last = self.run_dir / "last.pt"
        kept = (
            f"last good checkpoint kept: {last} (epoch {epoch - 1})"
            if epoch > 1 and last.is_file()
            else "no checkpoint was written yet (it diverged in epoch 1)"
        )
        msg = (
            f"training diverged: {what or f'loss is {loss}'} at epoch {epoch}, optimizer step {step + 1}; {kept}. "
            "Try a lower train.lr, a smaller train.grad_clip or check the data for NaN/inf vectors."
        )
        if self.main:
            _log("ERROR " + msg)
        raise TrainingDiverged(msg)
