"""Mamba-S train-step and inference throughput on CPU: our `cpu` scan vs `ref`, mambapy and a GRU.

    python benchmarks/bench_model.py            # full table (mambapy needs ~20 GB RAM: run on a quiet machine)
    python benchmarks/bench_model.py --quick    # small batches, < 4 GB per configuration, ~2 minutes

Each configuration runs in its own child process (so peak RSS is per configuration) with
MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ set as the Makefile does (`--malloc default` leaves glibc's
defaults). A train step = forward + (1 - cos) loss + backward + AdamW(param_groups) step; the
throughput is batch / median wall time per step; `cpu s` is the process CPU time per step (all threads),
which with `--threads 1` approximates the uncontended time on a busy machine. Ratios compare rows
measured in the same run; there are no timed asserts. On a busy machine use `--rounds R`: the whole
plan runs R times, interleaved, each row reports its median over rounds and each ratio is the median
of the per-round ratios (load that comes and goes then hits both sides of a ratio alike).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIG_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
D_VEC = 384  # MiniLM vector width


def build(impl: str):
    """(model, uses_kernel) for one implementation, Mamba-S sized (d_model 768, 8 layers, N 128)."""
    from torch import nn

    from lvmlib.core.config import ModelConfig
    from lvmlib.model import scan
    from lvmlib.model.models import PRESETS, build_model

    preset = PRESETS["mamba_s"]
    if impl in ("cpu", "cpu-torch", "ref"):
        model = build_model(ModelConfig(**preset, scan="ref" if impl == "ref" else "cpu"), D_VEC)
        return model, impl == "cpu" and scan.kernel_available()

    class Wrapped(nn.Module):  # same input projection / norm / head as ours around another backbone
        def __init__(self, backbone, d_model):
            super().__init__()
            self.input_proj, self.backbone = nn.Linear(D_VEC, d_model), backbone
            self.norm_f, self.head = nn.RMSNorm(d_model, eps=1e-5), nn.Linear(d_model, D_VEC)

        def forward(self, ctx):
            h = self.backbone(self.input_proj(ctx))
            h = h[0] if isinstance(h, tuple) else h
            return self.head(self.norm_f(h[:, -1]))

    d_model = preset["d_model"]
    if impl in ("mambapy", "mambapy-seq"):
        from mambapy.mamba import Mamba, MambaConfig

        cfg = MambaConfig(
            d_model=d_model,
            n_layers=preset["n_layers"],
            d_state=preset["d_state"],
            expand_factor=preset["expand"],
            d_conv=preset["d_conv"],
            pscan=impl == "mambapy",
        )
        return Wrapped(Mamba(cfg), d_model), False
    if impl == "gru":
        return Wrapped(nn.GRU(d_model, d_model, num_layers=preset["n_layers"], batch_first=True), d_model), False
    raise ValueError(impl)


def scan_step(spec: dict):
    """One Mamba-S layer's scan core (B, ED=1536, L, N=128): forward + backward. -> (step, info)."""
    import torch

    from lvmlib.model import scan

    g = torch.Generator().manual_seed(0)
    b, ed, n, length = spec["batch"], 1536, 128, spec["length"]
    args = [
        torch.randn(b, ed, length, generator=g),
        0.1 * torch.rand(b, ed, length, generator=g),
        -torch.rand(ed, n, generator=g) * 3,
        torch.randn(b, n, length, generator=g),
        torch.randn(b, n, length, generator=g),
        torch.randn(ed, generator=g),
    ]
    leaves = [a.requires_grad_() for a in args]
    impl = spec["impl"]
    if impl == "compile":  # torch.compile (inductor) of the unrolled recurrence, for comparison only

        def core(u, dt, A, B, C, D):
            h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (B, ED, N)
            ys = []
            for t in range(u.shape[2]):
                h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
                ys.append((h * C[:, None, :, t]).sum(-1))  # (B, ED)
            return torch.stack(ys, 2) + u * D[:, None]  # (B, ED, L)

        fn = torch.compile(core, dynamic=False)
    else:
        fn = {
            "cpu": scan._CoreKernel.apply,
            "cpu-pool": scan._CoreKernel.apply,
            "cpu-torch": scan._CoreTorch.apply,
            "ref": scan.selective_scan_ref,
        }[impl]
    t0 = time.perf_counter()
    with torch.no_grad():  # the reference batch chunk by batch chunk, so the check adds little memory
        want = torch.cat([scan.selective_scan_ref(*chunk) for chunk in scan._batch_chunks(*args)])
        err = (fn(*args) - want).abs().max().item()
        del want
    info = dict(
        first_call_s=time.perf_counter() - t0,
        max_err_vs_ref=err,
        kernel=impl in ("cpu", "cpu-pool") and scan.kernel_available(),
    )

    def step():
        fn(*leaves).sum().backward()

    return step, info


def child(spec: dict) -> dict:
    """Runs in a fresh process: build, warm up, time `steps` steps, report peak RSS."""
    import torch
    import torch.nn.functional as F

    from lvmlib.model.models import count_parameters, param_groups

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    if spec["mode"] == "scan":
        step, info = scan_step(spec)
        return dict(spec, **info, **measure(step, spec))
    model, uses_kernel = build(spec["impl"])
    batch, length = spec["batch"], spec["length"]
    ctx, tgt = torch.randn(batch, length, D_VEC), torch.randn(batch, D_VEC)
    if spec["mode"] == "train":
        impl_kw = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[spec.get("adamw", "default")]
        opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4, **impl_kw)

        def step():
            loss = (1 - F.cosine_similarity(model(ctx), tgt)).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        model.eval()

        def step():
            with torch.inference_mode():
                model(ctx)

    return dict(spec, kernel=uses_kernel, params=count_parameters(model), **measure(step, spec))


def measure(step, spec: dict) -> dict:
    times, cpu_times = [], []
    for i in range(spec["warmup"] + spec["steps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)  # all threads; with --threads 1 ~ uncontended wall
    sec = statistics.median(times)
    return dict(
        sec_per_step=sec,
        best_sec=min(times),
        cpu_sec_per_step=statistics.median(cpu_times),
        seq_per_s=spec["batch"] / sec,
        peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    )


def run_child(spec: dict, malloc: str) -> dict:
    env = {**os.environ, **(BIG_MALLOC if malloc == "big" else {})}
    if malloc == "default":
        for k in BIG_MALLOC:
            env.pop(k, None)
    env.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    if spec["impl"] == "cpu-torch":
        env["LVM_SCAN_KERNEL"] = "0"
    if spec["impl"] == "cpu-pool":  # the kernel on its own thread pool instead of torch's OpenMP pool
        env["LVM_SCAN_OPENMP"] = "0"
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=spec.get("timeout", 3600),
    )
    if proc.returncode != 0:
        return dict(spec, error=(proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:120])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan(quick: bool, only: list[str] | None, compile_rows: bool) -> list[dict]:
    """The rows of the table. Quick mode: batch 8 train rows, fewer steps, every config < ~4 GB."""
    b_train, steps, warm = (8, 3, 1) if quick else (64, 5, 2)
    b_big = 32 if quick else 256
    train_impls = ["cpu", "cpu-torch", "ref", "mambapy", "gru"]
    rows = [dict(mode="train", impl=i, batch=b_train, length=5) for i in train_impls]
    rows += [dict(mode="train", impl=i, batch=b_train, length=L) for L in (16, 64) for i in ("cpu", "gru")]
    rows += [dict(mode="infer", impl=i, batch=b, length=5) for b in (1, b_big) for i in ("cpu", "mambapy", "gru")]
    # one layer's scan core alone (forward + backward): what is fastest for L = 5..64
    b_scan = 16 if quick else 64
    rows += [
        dict(mode="scan", impl=i, batch=b_scan, length=L)
        for L in (5, 16, 64)
        for i in ["cpu", "cpu-pool", "cpu-torch", "ref"] + ["compile"] * compile_rows
        # ref at L=64: ~13 GB at B=64; compile at L=64: minutes; the torch path: ~20 s/step at B=16
        if not (i in ("ref", "compile") and L == 64) and not (quick and i == "cpu-torch" and L == 64)
    ]
    for r in rows:
        r.update(steps=steps * 4 if r["mode"] == "infer" else steps, warmup=warm, threads=2)
    return [r for r in rows if not only or r["impl"] in only]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches and few steps (development)")
    ap.add_argument("--only", nargs="*", help="implementations: cpu cpu-pool cpu-torch ref mambapy gru compile")
    ap.add_argument(
        "--malloc",
        choices=["big", "default", "both"],
        default="big",
        help="glibc malloc thresholds for the children (big = the Makefile's)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="add torch.compile rows to the scan-core table")
    ap.add_argument("--modes", nargs="*", default=["train", "infer", "scan"], help="train infer scan")
    ap.add_argument("--lengths", nargs="*", type=int, help="only rows with these context lengths")
    ap.add_argument(
        "--adamw",
        choices=["default", "foreach", "fused"],
        default="default",
        help="AdamW implementation of every train row (default = what lvmlib.train.loop uses)",
    )
    ap.add_argument("--rounds", type=int, default=1, help="run the plan this many times, interleaved; report medians")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(child(json.loads(args.child))))
        return
    mallocs = ["big", "default"] if args.malloc == "both" else [args.malloc]
    print(
        f"# bench_model {'--quick ' if args.quick else ''}| {platform.machine()} | {os.cpu_count()} cpus | "
        f"threads {args.threads} | AdamW {args.adamw} | load avg {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    rounds = []
    for r in range(args.rounds):
        results = []
        for malloc in mallocs:
            for spec in plan(args.quick, args.only, args.compile):
                if spec["mode"] not in args.modes or (args.lengths and spec["length"] not in args.lengths):
                    continue
                spec.update(threads=args.threads, adamw=args.adamw)
                res = dict(run_child(spec, malloc), malloc=malloc)
                results.append(res)
                print(
                    f"  done{f' (round {r + 1})' if args.rounds > 1 else ''}: {res['mode']} {res['impl']} "
                    f"B={res['batch']} L={res['length']} "
                    + (f"FAILED {res['error']}" if "error" in res else f"{res['sec_per_step']:.3f} s/step"),
                    flush=True,
                )
        rounds.append(results)
    print_table(rounds)
    print(f"# load avg {os.getloadavg()[0]:.2f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps(rounds if args.rounds > 1 else rounds[0], indent=2) + "\n")


BASELINES = {
    "train": ("mambapy", "gru", "ref"),
    "infer": ("mambapy", "gru"),
    "scan": ("cpu-pool", "cpu-torch", "ref", "compile"),
}


def _same_config(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("mode", "batch", "length", "malloc"))


def print_table(rounds: list[list[dict]]) -> None:
    """One line per configuration; ratios divide seq/s by a baseline's seq/s from this same run
    (with several rounds: the row's median over rounds, and the median of the per-round ratios)."""
    print(
        f"\n{'mode':5s} {'impl':9s} {'malloc':7s} {'B':>4s} {'L':>3s} {'s/step':>8s} {'cpu s':>7s} {'seq/s':>8s} "
        f"{'peak GB':>7s}  ratios of seq/s (same run{f', median of {len(rounds)} rounds' if len(rounds) > 1 else ''})"
    )
    for i, res in enumerate(rounds[0]):
        head = f"{res['mode']:5s} {res['impl']:9s} {res['malloc']:7s} {res['batch']:4d} {res['length']:3d}"
        runs = [rnd[i] for rnd in rounds if "error" not in rnd[i]]
        if not runs:
            print(f"{head}  FAILED: {res['error']}")
            continue
        res = dict(
            runs[0],
            sec_per_step=statistics.median(r["sec_per_step"] for r in runs),
            cpu_sec_per_step=statistics.median(r["cpu_sec_per_step"] for r in runs),
            peak_rss_gb=max(r["peak_rss_gb"] for r in runs),
        )
        res["seq_per_s"] = res["batch"] / res["sec_per_step"]
        ratios = []
        for base in BASELINES[res["mode"]]:
            per_round = [
                mine["seq_per_s"] / ref["seq_per_s"]
                for rnd in rounds
                for mine in [rnd[i]]
                for ref in rnd
                if ref["impl"] == base
                and ref is not mine
                and "error" not in ref
                and "error" not in mine
                and _same_config(ref, mine)
            ]
            if per_round:
                spread = f" [{min(per_round):.2f}-{max(per_round):.2f}]" if len(per_round) > 1 else ""
                ratios.append(f"{statistics.median(per_round):.2f}x {base}{spread}")
        if res["mode"] == "scan":
            ratios.append(f"max|err| vs ref {res['max_err_vs_ref']:.1e}, first call {res['first_call_s']:.1f} s")
        if res["impl"] == "cpu" and not res.get("kernel"):
            ratios.append("NO KERNEL: pure-torch path")
        print(
            f"{head} {res['sec_per_step']:8.3f} {res['cpu_sec_per_step']:7.3f} {res['seq_per_s']:8.1f} "
            f"{res['peak_rss_gb']:7.2f}  " + ", ".join(ratios)
        )


if __name__ == "__main__":
    main()
