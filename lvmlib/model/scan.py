"""Selective-scan backends beside the sequential reference (the "S6" recurrence of Mamba-1).

Shapes (mamba_ssm layout, channels first, see the glossary in `lvmlib.model.models`):
    u, delta, z: (B, ED, L)   A: (ED, N)   B, C: (B, N, L)   D, delta_bias: (ED)   out: (B, ED, L)

    dt_t = softplus(delta_t + delta_bias)          (softplus only if delta_softplus)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t           h: (B, ED, N), h_{-1} = 0
    y_t  = <C_t, h_t> + D * u_t ;   out_t = y_t * silu(z_t)      (if z is given)

Only the recurrence (u, dt, A, B, C, D -> y) needs a custom backward; the softplus before it and the
gate after it are cheap (B, ED, L) torch ops left to autograd.

Backends (`selective_scan(..., backend=)`):
- `ref`: `selective_scan_ref`, the sequential specification mirroring mamba_ssm's
  `selective_scan_ref`; autograd keeps (B, ED, L, N) tensors, so it is only for tests and small runs.
- `cpu`: ours. A custom autograd Function that keeps only its inputs for backward and recomputes the
  states there. On CPU tensors it runs a small C kernel (compiled once with the system C compiler,
  loaded with ctypes, cached in $LVM_CACHE_DIR or ~/.cache/lvm-study/scan_kernel, parallel over ED
  in torch's own OpenMP pool); on CUDA tensors, with LVM_SCAN_KERNEL=0, or when no compiler works, it
  runs the reference in batch chunks under recomputation (pure torch, any device).
- `cuda`: mamba_ssm's `selective_scan_fn` (import guarded: mamba_ssm cannot be imported without CUDA).
- `auto`: `cuda` when mamba_ssm is importable and the tensors are on a CUDA device, else `cpu`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from lvmlib.core.backends import resolve_backend

BACKENDS = ("auto", "ref", "cpu", "cuda")
# Elements of one (b, ED, L, N) chunk the pure-torch fallback materialises at a time (64 MB fp32).
_FALLBACK_CHUNK_ELEMS = 1 << 24


# --------------------------------------------------------------------------- reference
def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Sequential specification; mirrors mamba_ssm.ops.selective_scan_interface.selective_scan_ref
    (real A, B and C input-dependent, ungrouped). Computes in fp32, returns u's dtype."""
    dtype_in = u.dtype
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]  # (B, ED, L)
    if delta_softplus:
        delta = F.softplus(delta)  # (B, ED, L)
    batch, ed, length = u.shape
    n = A.shape[1]
    dA = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (B, ED, L, N)
    dBu = (delta * u).unsqueeze(-1) * B.transpose(1, 2)[:, None, :, :]  # (B, ED, L, N)
    h = u.new_zeros(batch, ed, n)  # (B, ED, N)
    ys = []
    for t in range(length):
        h = dA[:, :, t] * h + dBu[:, :, t]  # (B, ED, N)
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))  # (B, ED)
    y = torch.stack(ys, dim=2)  # (B, ED, L)
    out = y if D is None else y + u * D.float()[:, None]  # (B, ED, L)
    if z is not None:
        out = out * F.silu(z.float())  # (B, ED, L)
    return out.to(dtype_in)


# --------------------------------------------------------------------------- ours: recompute
class _CoreTorch(torch.autograd.Function):
    """Pure-torch core (u, dt, A, B, C, D) -> y: forward without a graph, backward recomputes the
    reference on batch chunks, so no (B, ED, L, N) tensor lives between forward and backward."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, D):
        ctx.save_for_backward(u, dt, A, B, C, D)
        return torch.cat([selective_scan_ref(*chunk) for chunk in _batch_chunks(u, dt, A, B, C, D)])  # (B, ED, L)

    @staticmethod
    def backward(ctx, dy):
        saved = ctx.saved_tensors
        grads: list[list[torch.Tensor]] = [[] for _ in saved]
        start = 0
        for chunk in _batch_chunks(*saved):
            stop = start + chunk[0].shape[0]
            leaves = [
                None if t is None else t.detach().requires_grad_(ctx.needs_input_grad[i]) for i, t in enumerate(chunk)
            ]
            wanted = [i for i, t in enumerate(leaves) if t is not None and t.requires_grad]
            with torch.enable_grad():
                y = selective_scan_ref(*leaves)  # (b, ED, L)
                got = torch.autograd.grad(y, [leaves[i] for i in wanted], dy[start:stop])
            for i, g in zip(wanted, got):
                grads[i].append(g)
            start = stop
        # u, dt, B, C are split over the batch (concatenate); A and D are shared (sum)
        return tuple(
            None if not gs else torch.cat(gs) if i in (0, 1, 3, 4) else torch.stack(gs).sum(0)
            for i, gs in enumerate(grads)
        )


def _batch_chunks(u, dt, A, B, C, D):
    """The core arguments sliced over the batch so one chunk's (b, ED, L, N) stays under the budget."""
    per_item = u.shape[1] * u.shape[2] * A.shape[1]
    step = max(1, _FALLBACK_CHUNK_ELEMS // max(per_item, 1))
    for s in range(0, u.shape[0], step):
        yield u[s : s + step], dt[s : s + step], A, B[s : s + step], C[s : s + step], D


# --------------------------------------------------------------------------- ours: C kernel
# One (b, d) channel at a time: h (N floats) stays in registers/L1 across all L steps, so the
# (B, ED, L, N) tensors of the reference never exist. Backward recomputes the channel's states into an
# (L+1, N) scratch buffer, then runs the reverse recurrence (as mamba_ssm's CUDA kernel, per chunk).
# Threads split ED; each owns its rows of dA and dD and a private dB/dC buffer, summed in torch.
_C_SOURCE = (Path(__file__).parent / "csrc" / "selective_scan.c").read_text()  # the kernel, compiled on first use


class _Args(ctypes.Structure):
    _fields_ = (
        [(k, ctypes.c_void_p) for k in "u dt A B C D dy y du ddt dA dD".split()]
        + [(k, ctypes.c_int64) for k in ("batch", "ed", "len", "n")]
        + [(k, ctypes.c_int64 * 3) for k in "su sdt sy sdy sdu sddt".split()]
        + [(k, ctypes.c_int64 * 2) for k in ("sB", "sC")]
    )


# -ffinite-math-only -fno-signed-zeros let the exp2 clamp be vmaxps/vminps (the kernel tests no NaN/inf);
# -mprefer-vector-width=512: gcc's Intel tuning defaults to 256-bit vectors; with AVX-512 the full width
# is faster (bench_model.py --modes scan); gcc ignores it without AVX-512, other compilers fall through.
_FAST = [
    "-O3",
    "-fno-trapping-math",
    "-fno-math-errno",
    "-ffp-contract=fast",
    "-ffinite-math-only",
    "-fno-signed-zeros",
]
_NATIVE = ["-march=native", "-mprefer-vector-width=512"]
_FLAGS = (
    [*_FAST, *_NATIVE, "-fopenmp"],
    [*_FAST, *_NATIVE, "-fopenmp-simd"],
    [*_FAST, "-march=native", "-fopenmp"],
    [*_FAST, "-fopenmp-simd"],
    ["-O2"],
)  # tried in order; the first that builds and loads wins


@functools.lru_cache(maxsize=1)
def _kernel():
    """The compiled kernel (ctypes.CDLL), or None: LVM_SCAN_KERNEL=0, no C compiler, or a failed build
    (then one warning says why, and the pure-torch path runs)."""
    if os.environ.get("LVM_SCAN_KERNEL", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        warnings.warn(
            "lvmlib.model.scan: no C compiler found; the cpu scan uses the slower pure-torch path", stacklevel=2
        )
        return None
    cpu = platform.machine() + platform.processor()
    if Path("/proc/cpuinfo").exists():  # -march=native: key the build by the CPU model and flags
        cpu += "".join(
            sorted(
                {ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith(("model name", "flags"))}
            )
        )
    errors = []
    for flags in _FLAGS:
        key = hashlib.sha256("\0".join([_C_SOURCE, cc, *flags, cpu]).encode()).hexdigest()[:16]
        lib = _cache_dir() / f"scan_{key}.so"
        if not lib.exists():
            lib.parent.mkdir(parents=True, exist_ok=True)
            src, tmp = lib.with_suffix(f".{os.getpid()}.c"), lib.with_suffix(f".{os.getpid()}.tmp")
            src.write_text(_C_SOURCE)
            try:
                proc = subprocess.run(
                    [cc, *flags, "-fPIC", "-shared", "-o", str(tmp), str(src)],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                failure = (proc.stderr.strip()[-300:] or f"exit {proc.returncode}") if proc.returncode else ""
            except (OSError, subprocess.SubprocessError) as exc:  # compiler missing or hung
                failure = f"{type(exc).__name__}: {exc}"
            src.unlink(missing_ok=True)
            if failure:
                tmp.unlink(missing_ok=True)
                errors.append(f"{cc} {' '.join(flags)}: {failure}")
                continue
            os.replace(tmp, lib)  # atomic: concurrent builders each publish a complete file
        try:
            dll = ctypes.CDLL(str(lib))
        except OSError as exc:
            errors.append(f"{lib}: {exc}")
            continue
        i64, ptr, args = ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(_Args)
        dll.scan_fwd.argtypes = [args, i64, i64]
        dll.scan_bwd.argtypes = [args, ptr, ptr, i64, i64]
        dll.scan_fwd_par.argtypes = [args, ctypes.c_int]
        dll.scan_bwd_par.argtypes = [args, ptr, ctypes.c_int]
        dll.openmp = bool(dll.scan_openmp()) and os.environ.get("LVM_SCAN_OPENMP", "1") != "0"
        return dll
    warnings.warn(
        "lvmlib.model.scan: building the C scan kernel failed; the cpu scan uses the pure-torch path: "
        + " | ".join(errors),
        stacklevel=2,
    )
    return None


def _cache_dir() -> Path:
    from lvmlib.core.paths import cache_root  # the one home of the cache root (data.cache_dir aside)

    return cache_root() / "scan_kernel"


def kernel_available() -> bool:
    """True when the cpu backend runs the compiled kernel for CPU float32 tensors."""
    return _kernel() is not None


_POOL: ThreadPoolExecutor | None = None


def _forget_pool() -> None:  # a forked child inherits the pool object but not its threads
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)


def _nthreads(ed: int) -> int:
    return max(1, min(torch.get_num_threads(), ed))


def _run(kind: str, args: _Args, dBC: torch.Tensor | None = None) -> None:
    """Run scan_fwd / scan_bwd over all ED channels on torch's thread count: inside torch's OpenMP
    pool when the kernel was built with OpenMP, else on a thread pool (ctypes releases the GIL)."""
    global _POOL
    dll, ed = _kernel(), args.ed
    nthreads = _nthreads(ed) if dBC is None else dBC.shape[1]
    extra = () if dBC is None else (dBC.data_ptr(),)
    if dll.openmp or nthreads == 1:
        code = getattr(dll, f"scan_{kind}_par")(ctypes.byref(args), *extra, nthreads)
    else:
        if _POOL is None or _POOL._max_workers < nthreads:
            _POOL = ThreadPoolExecutor(max_workers=nthreads, thread_name_prefix="lvm-scan")
        part = args.batch * args.len * args.n * 4  # bytes of one thread's dB (or dC) buffer

        def job(i: int) -> int:
            lo, hi = ed * i // nthreads, ed * (i + 1) // nthreads
            if dBC is None:
                return dll.scan_fwd(ctypes.byref(args), lo, hi)
            return dll.scan_bwd(ctypes.byref(args), extra[0] + i * part, extra[0] + (nthreads + i) * part, lo, hi)

        code = max(_POOL.map(job, range(nthreads)))
    if code:
        raise MemoryError("lvmlib.model.scan: the C kernel could not allocate its scratch buffer")


class _CoreKernel(torch.autograd.Function):
    """Core (u, dt, A, B, C, D) -> y in the C kernel (CPU fp32); saves only its inputs."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, D):
        A = A.contiguous()
        D = None if D is None else D.contiguous()
        B, C = (t if t.stride(1) == 1 else t.transpose(1, 2).contiguous().transpose(1, 2) for t in (B, C))
        batch, ed, length = u.shape
        y = u.new_empty(batch, length, ed).transpose(1, 2)  # (B, ED, L) view of (B, L, ED) memory
        _run("fwd", _make_args(u=u, dt=dt, A=A, B=B, C=C, D=D, y=y))
        ctx.save_for_backward(u, dt, A, B, C, D)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        u, dt, A, B, C, D = ctx.saved_tensors
        batch, ed, length = u.shape
        dy = dy.float()
        du, ddt, dA = torch.empty_like(u), torch.empty_like(dt), torch.zeros_like(A)
        dD = None if D is None else torch.zeros_like(D)
        dBC = u.new_zeros(2, _nthreads(ed), batch, length, A.shape[1])  # per-thread (B, L, N) sums of dB, dC
        _run("bwd", _make_args(u=u, dt=dt, A=A, B=B, C=C, D=D, dy=dy, du=du, ddt=ddt, dA=dA, dD=dD), dBC)
        dB, dC = dBC.sum(1).transpose(2, 3)  # (B, N, L) each
        return du, ddt, dA, dB, dC, dD


def _make_args(**tensors) -> _Args:
    a = _Args()
    for name, t in tensors.items():
        setattr(a, name, None if t is None else t.data_ptr())
        if name in ("u", "dt", "y", "dy", "du", "ddt"):
            setattr(a, "s" + name, (ctypes.c_int64 * 3)(*t.stride()))
    a.batch, a.ed, a.len = tensors["u"].shape
    a.n = tensors["A"].shape[1]
    a.sB = (ctypes.c_int64 * 2)(tensors["B"].stride(0), tensors["B"].stride(2))
    a.sC = (ctypes.c_int64 * 2)(tensors["C"].stride(0), tensors["C"].stride(2))
    return a


# --------------------------------------------------------------------------- cuda
@functools.lru_cache(maxsize=1)
def _mamba_ssm_ops():
    """(selective_scan_fn, mamba_inner_fn or None) from mamba_ssm, or None. Imported lazily: the
    package fails at import time without CUDA, so it is never imported at module level.
    mamba_inner_fn (the fused fast path of mamba_simple) also needs causal_conv1d."""
    if not torch.cuda.is_available():
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
    except Exception:  # ImportError, or OSError/RuntimeError from a kernel built for another torch
        return None
    try:
        import causal_conv1d  # noqa: F401
    except Exception:
        mamba_inner_fn = None
    return selective_scan_fn, mamba_inner_fn


def cuda_available() -> bool:
    """True when mamba_ssm's CUDA kernels can be used in this process."""
    return _mamba_ssm_ops() is not None


def _cuda_missing(device: torch.device) -> str | None:
    """Why `model.scan = 'cuda'` cannot run for tensors on `device` (None when it can)."""
    if not torch.cuda.is_available():
        return "needs a CUDA device, and torch.cuda.is_available() is False here"
    if _mamba_ssm_ops() is None:
        return "needs mamba_ssm (pip install -e '.[cuda]', see pyproject.toml); it could not be imported"
    if device.type != "cuda":
        return f"got tensors on {device}; move the model to a CUDA device"
    return None


def scan_backend(requested: str, device: torch.device) -> str:
    """model.scan -> the backend for tensors on `device`, through the kit's one resolver (BackendError):
    `auto` -> cuda when mamba_ssm is usable and the tensors are on a CUDA device, else cpu."""
    return resolve_backend(
        "model.scan",
        requested,
        BACKENDS,
        auto=lambda: "cuda" if device.type == "cuda" and cuda_available() else "cpu",
        unavailable={"cuda": lambda: _cuda_missing(device)},
    )


# --------------------------------------------------------------------------- entry point
def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend: str = "cpu"):
    """Selective scan with mamba_ssm's `selective_scan_fn` signature plus `backend`.
    u, delta, z: (B, ED, L); A: (ED, N); B, C: (B, N, L); D, delta_bias: (ED) -> (B, ED, L)."""
    backend = scan_backend(backend, u.device)
    if backend == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if backend == "cuda":
        return _mamba_ssm_ops()[0](u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    dtype_in = u.dtype
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    dt = delta if delta_bias is None else delta + delta_bias.float()[:, None]  # (B, ED, L)
    if delta_softplus:
        dt = F.softplus(dt)  # (B, ED, L)
    D = None if D is None else D.float()
    use_kernel = u.device.type == "cpu" and kernel_available()
    y = (_CoreKernel if use_kernel else _CoreTorch).apply(u, dt, A, B, C, D)  # (B, ED, L)
    if z is not None:
        y = y * F.silu(z.float())  # (B, ED, L)
    return y.to(dtype_in)
