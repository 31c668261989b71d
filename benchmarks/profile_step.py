"""Where a train step spends its time: torch.profiler, one table column per configuration.

    python benchmarks/profile_step.py                      # Mamba-S, cosine loss, B 64, L 5 16 64, 2 threads
    python benchmarks/profile_step.py --lengths 5 --steps 3
    python benchmarks/profile_step.py --recipe params/wiki1000_x800.yaml --set loss.bank_sample=0 \
        --set loss.bank_sample=16384                     # the headline's step with its real loss, one column per --set
    python benchmarks/profile_step.py --recipe params/wiki1000_x800.yaml --set "loss.bank_sample=4096;train.batch_size=256"

With --recipe, the step is the params file's model and its real `LVMLoss` (the bank softmax of `loss.negatives:
bank` over a synthetic --bank of unit vectors, as many as the headline's train chunks; bank rows drawn afresh
per step under `loss.bank_sample`), micro-batch `train.batch_size`, context `data.context_len`; each --set is one
column. "bank loss" is the softmax over the bank, forward and backward, plus the step's draw; "input/head/loss"
keeps the model's input projection, head, skip mixture and the cosine term.

A train step is bench_model.py's: forward + (1 - cos) loss + backward + AdamW(param_groups) step.
Every operator the profiler records on the main thread (intra-op threads work inside their operator)
is put in one category by where it ran in the forward pass; a backward node goes to the category of
the forward op that created it (autograd's sequence number), so "projections" is the matmuls of
in_proj / x_proj / dt_proj / out_proj forward *and* backward:

    scan kernel       the selective-scan recurrence (`_CoreKernel` forward and backward)
    projections       in_proj, x_proj, dt_proj, out_proj (matmuls, fwd + bwd)
    conv              the causal depthwise convolution (`causal_conv1d`)
    gating            the rest of the mixer: silu, softplus, Δ bias, y * silu(z), splits, A = -exp(A_log)
    norms             the RMSNorms of the blocks (and norm_f)
    residual          the residual adds and dropout of the blocks
    input/head/loss   input_proj, head, cosine loss
    AdamW step        optimizer.step + zero_grad
    autograd other    gradient accumulation and engine bookkeeping

Each configuration runs in a fresh process (like bench_model.py). Profiled time carries the
profiler's own per-op overhead; the `unprofiled s/step` column is the same step timed without it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
D_VEC = 384
CATEGORIES = (
    "scan kernel",
    "projections",
    "conv",
    "gating",
    "norms",
    "residual",
    "input/head/loss",
    "AdamW step",
    "autograd other",
    "bank loss",
)


def child(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.autograd.profiler import record_function

    import lvmlib.model.models as M
    from lvmlib.core.config import ModelConfig

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    if spec.get("recipe"):
        return recipe_child(spec)
    model = M.build_model(ModelConfig(**M.PRESETS["mamba_s"], scan="cpu"), D_VEC)
    opt = torch.optim.AdamW(M.param_groups(model, 0.01), lr=1e-4)
    ctx, tgt = torch.randn(spec["batch"], spec["length"], D_VEC), torch.randn(spec["batch"], D_VEC)

    def step():
        with record_function("lvm::input/head/loss"):
            loss = (1 - F.cosine_similarity(model(ctx), tgt)).mean()
        loss.backward()
        with record_function("lvm::AdamW step"):
            opt.step()
            opt.zero_grad(set_to_none=True)

    return profile_steps(spec, model, step)


def recipe_child(spec: dict) -> dict:
    """The params file's model and LVMLoss, bank negatives over a synthetic bank of spec['bank'] rows."""
    import numpy as np
    import torch
    from torch.autograd.profiler import record_function

    import lvmlib.model.models as M
    import lvmlib.train.losses as L
    from lvmlib.core.config import load_config

    cfg = load_config(spec["recipe"], spec["sets"])
    b, k = cfg.train.batch_size, cfg.data.context_len
    model = M.build_model(cfg.model.model_copy(update={"scan": "cpu"}), D_VEC)
    loss_fn = L.LVMLoss(cfg.loss, D_VEC)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(spec["bank"], D_VEC)).astype(np.float32)
    if cfg.loss.negatives == "bank":
        n = spec["bank"]
        loss_fn.bank = L.BankNegatives(vectors, np.arange(n), np.arange(n), dtype=cfg.loss.bank_dtype)
    opt = torch.optim.AdamW(M.param_groups(model, 0.01) + loss_fn.param_groups(0.01), lr=1e-4)
    rows = (rng.integers(0, spec["bank"], size=(b, k)), rng.integers(0, spec["bank"], size=b))
    ctx, tgt = torch.from_numpy(vectors[rows[0]]), torch.from_numpy(vectors[rows[1]])
    orig = L.bank_info_nce

    def bank_scoped(*a, **kw):
        with record_function("lvm::bank loss"):
            return orig(*a, **kw)

    L.bank_info_nce = bank_scoped

    def step():
        if loss_fn.bank is not None:
            with record_function("lvm::bank loss"):
                loss_fn.bank.draw(rng, cfg.loss.bank_sample)
        with record_function("lvm::input/head/loss"):
            loss = loss_fn(model(ctx), tgt, rows=rows)["loss"]
        loss.backward()
        with record_function("lvm::AdamW step"):
            opt.step()
            opt.zero_grad(set_to_none=True)

    return profile_steps(dict(spec, batch=b, length=k), model, step)


def profile_steps(spec: dict, model, step) -> dict:
    """Warm up, time spec['steps'] unprofiled steps, then profile as many with every scope hooked."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    import lvmlib.model.models as M

    for _ in range(spec["warmup"]):
        step()
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)

    # scopes: module hooks and wrapped functions open a record_function for the forward pass
    def scoped(mod, name):
        state = {}
        mod.register_forward_pre_hook(lambda *_: state.__setitem__(name, record_function(name).__enter__()))
        mod.register_forward_hook(lambda *_: state.pop(name).__exit__(None, None, None))

    for blk in model.layers:
        if not hasattr(blk, "mixer"):
            continue
        scoped(blk, "lvm::residual")
        scoped(blk.norm, "lvm::norms")
        scoped(blk.mixer, "lvm::gating")
        for name in ("in_proj", "x_proj", "dt_proj", "out_proj"):
            scoped(getattr(blk.mixer, name), "lvm::projections")
    scoped(model.norm_f, "lvm::norms")
    for fn_name, label in spec["wrapped"].items():  # module-level functions the mixer calls
        orig = getattr(M, fn_name)

        def wrapper(*a, _orig=orig, _label=label, **k):
            with record_function(_label):
                return _orig(*a, **k)

        setattr(M, fn_name, wrapper)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(spec["steps"]):
            step()
    return dict(spec, unprofiled_s=sorted(times)[len(times) // 2], **categorise(prof.events(), spec["steps"]))


def categorise(events, steps: int) -> dict:
    """Self CPU time of every main-thread event, summed per category (ms per step)."""

    def scope(e):
        while e is not None:
            if e.name.startswith("lvm::") or e.name.startswith("Optimizer."):
                return "AdamW step" if e.name.startswith("Optimizer.") else e.name[5:]
            e = e.cpu_parent
        return None

    def kernel(e):
        while e is not None:
            if "_CoreKernel" in e.name:
                return True
            e = e.cpu_parent
        return False

    fwd_cat, bwd = {}, []
    ms = dict.fromkeys(CATEGORIES, 0.0)
    for e in events:
        if e.name.startswith("lvm::"):
            continue  # scopes themselves: their time is their children's (+ a few µs of their own)
        top = e
        while top.cpu_parent is not None and not top.cpu_parent.name.startswith("lvm::"):
            top = top.cpu_parent
        if top.name.startswith("autograd::engine::evaluate_function"):
            bwd.append((top, e))
            continue
        cat = "scan kernel" if kernel(e) else (scope(e) or "autograd other")
        if e.sequence_nr >= 0 and cat != "scan kernel":
            fwd_cat.setdefault(e.sequence_nr, cat)
        ms[cat] += e.self_cpu_time_total / 1e3
    for top, e in bwd:
        if kernel(e):
            cat = "scan kernel"
        elif "AccumulateGrad" in top.name or top.sequence_nr < 0:
            cat = "autograd other"
        else:
            cat = fwd_cat.get(top.sequence_nr, "autograd other")
        ms[cat] += e.self_cpu_time_total / 1e3
    return {"ms_per_step": {k: v / steps for k, v in ms.items()}}


def run_child(spec: dict) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(spec["threads"]),
        "MALLOC_MMAP_THRESHOLD_": "4294967296",
        "MALLOC_TRIM_THRESHOLD_": "4294967296",
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"profile child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lengths", nargs="*", type=int, default=[5, 16, 64])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipe", help="a params file: profile its model and loss (one column per --set)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="K=V[;K=V]", help="with --recipe: one column's overrides"
    )
    ap.add_argument("--bank", type=int, default=167_000, help="with --recipe: synthetic bank rows")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(child(json.loads(args.child))))
        return
    print(
        f"# profile_step | {platform.machine()} | {os.cpu_count()} cpus | threads {args.threads} | "
        f"{'' if args.recipe else f'B {args.batch} | '}load avg {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    common = dict(steps=args.steps, warmup=2, threads=args.threads, wrapped={"causal_conv1d": "lvm::conv"})
    if args.recipe:
        print(f"# {args.recipe}, synthetic bank of {args.bank:,} rows", flush=True)
        results = [
            run_child(
                dict(
                    common, recipe=args.recipe, sets=[y for y in x.split(";") if y], bank=args.bank, label=x or "as is"
                )
            )
            for x in (args.set or [""])
        ]
    else:
        results = [run_child(dict(common, batch=args.batch, length=L, label=f"L = {L}")) for L in args.lengths]
    print_table(results)
    print(f"# load avg {os.getloadavg()[0]:.2f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def print_table(results: list[dict]) -> None:
    head = " | ".join(f"{r['label']}: ms | %" for r in results)
    print(f"\n| category | {head} |")
    print("|---|" + "---:|---:|" * len(results))
    totals = [sum(r["ms_per_step"].values()) for r in results]
    for cat in CATEGORIES:
        cells = " | ".join(
            f"{r['ms_per_step'][cat]:.0f} | {100 * r['ms_per_step'][cat] / t:.0f} %" for r, t in zip(results, totals)
        )
        print(f"| {cat} | {cells} |")
    print("| **total (profiled)** | " + " | ".join(f"**{t:.0f}** | 100 %" for t in totals) + " |")
    print("| unprofiled s/step | " + " | ".join(f"{r['unprofiled_s']:.3f} | " for r in results) + " |")


if __name__ == "__main__":
    main()
