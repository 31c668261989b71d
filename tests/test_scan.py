"""lvmlib.model.scan: every backend against the sequential reference, outputs and every gradient."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from lvmlib.core.errors import BackendError
from lvmlib.model import scan

LENGTHS = (1, 5, 16, 64)
RTOL, ATOL = 1e-4, 1e-5  # fp32; ATOL is relative to the reference's largest magnitude
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(length, batch=3, ed=12, n=8, full=True, seed=0):
    """Scan arguments in mamba_ssm layout; `full` adds z, delta_bias and softplus (the model's call)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    delta = 0.5 * r(batch, ed, length) if full else 0.2 * torch.rand(batch, ed, length, generator=g)
    A = -(0.1 + 3 * torch.rand(ed, n, generator=g))
    args = dict(
        u=r(batch, ed, length),
        delta=delta,
        A=A,
        B=r(batch, n, length),
        C=r(batch, n, length),
        D=r(ed),
        z=r(batch, ed, length) if full else None,
        delta_bias=0.3 * r(ed) if full else None,
    )
    return args, dict(delta_softplus=full)


def run(fn, args, kw, grad_seed=1):
    """Output and gradients of every tensor argument for a fixed random output gradient."""
    leaves = {k: (None if v is None else v.detach().clone().requires_grad_()) for k, v in args.items()}
    out = fn(**leaves, **kw)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)))
    return {"out": out.detach(), **{f"d{k}": v.grad for k, v in leaves.items() if v is not None}}


def assert_all_close(got, want, label):
    for key, ref in want.items():
        err = (got[key] - ref).abs().max().item()
        print(f"{label} {key:12s} max|err| {err:.2e}  atol {ATOL * ref.abs().max().item():.2e}  rtol {RTOL:.0e}")
    for key, ref in want.items():
        torch.testing.assert_close(
            got[key], ref, rtol=RTOL, atol=ATOL * ref.abs().max().item(), msg=lambda m: f"{label} {key}: {m}"
        )


def ref_fn(**kw):
    return scan.selective_scan(**kw, backend="ref")


def cpu_fn(**kw):
    return scan.selective_scan(**kw, backend="cpu")


@pytest.fixture
def torch_path(monkeypatch):
    """Force the pure-torch recompute path of the cpu backend, with several batch chunks."""
    monkeypatch.setattr(scan, "kernel_available", lambda: False)
    monkeypatch.setattr(scan, "_FALLBACK_CHUNK_ELEMS", 1)  # one batch row per chunk


def require_kernel():
    if not scan.kernel_available():
        if shutil.which("cc") or shutil.which("gcc"):
            pytest.fail("a C compiler is present but the scan kernel did not build (see the warning)")
        pytest.skip("no C compiler: the cpu backend runs its pure-torch path")


@pytest.mark.parametrize("full", [True, False], ids=["z_bias_softplus", "bare"])
@pytest.mark.parametrize("length", LENGTHS)
def test_cpu_kernel_matches_ref(length, full):
    require_kernel()
    args, kw = make_inputs(length, full=full)
    assert_all_close(run(cpu_fn, args, kw), run(ref_fn, args, kw), f"kernel L={length}")


@pytest.mark.parametrize("length", LENGTHS)
def test_cpu_torch_path_matches_ref(length, torch_path):
    args, kw = make_inputs(length)
    assert_all_close(run(cpu_fn, args, kw), run(ref_fn, args, kw), f"torch-path L={length}")


def test_kernel_handles_strided_views():
    """The model hands the kernel (B, ED, L) views of channels-last memory; results must not depend on it."""
    require_kernel()
    args, kw = make_inputs(7, batch=2, ed=10, n=6)
    strided = {
        k: (v if v is None or v.dim() < 3 else v.transpose(1, 2).contiguous().transpose(1, 2)) for k, v in args.items()
    }
    assert strided["u"].stride(2) != 1
    assert_all_close(run(cpu_fn, strided, kw), run(ref_fn, args, kw), "strided")


def test_realistic_sizes_match_ref():
    """Model-like sizes (N=64 spans several SIMD widths, ED not a multiple of the thread split)."""
    require_kernel()
    args, kw = make_inputs(5, batch=4, ed=67, n=64, seed=3)
    assert_all_close(run(cpu_fn, args, kw), run(ref_fn, args, kw), "N=64")


@pytest.mark.parametrize("runtime", ["openmp", "thread_pool"])
def test_kernel_threads_split_channels_correctly(runtime, monkeypatch):
    """Several threads (each owning ED rows of dA, dD and its own dB/dC buffer) give the reference."""
    require_kernel()
    dll = scan._kernel()
    if runtime == "openmp" and not dll.openmp:
        pytest.skip("the kernel was built without OpenMP on this machine")
    monkeypatch.setattr(dll, "openmp", runtime == "openmp")
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        args, kw = make_inputs(9, ed=13)
        assert_all_close(run(cpu_fn, args, kw), run(ref_fn, args, kw), f"3 threads {runtime}")
    finally:
        torch.set_num_threads(threads)


def test_kernel_shares_torchs_openmp_runtime():
    """Built with -fopenmp after torch is loaded, the kernel must not bring a second OpenMP runtime
    (two runtimes spin against each other for the same cores). Checked in a fresh process: other
    libraries of the suite (faiss) map their own libgomp, which is not the kernel's doing."""
    import subprocess
    import sys

    require_kernel()
    if not scan._kernel().openmp or not os.path.exists("/proc/self/maps"):
        pytest.skip("kernel without OpenMP, or not Linux")
    code = (
        "import torch; from lvmlib.model import scan; assert scan._kernel() is not None\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(sorted({l.split()[-1] for l in maps.splitlines() if 'gomp' in l.rsplit('/', 1)[-1]}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    runtimes = eval(out.stdout.strip().splitlines()[-1])
    print("OpenMP runtimes mapped:", runtimes)
    assert len(runtimes) == 1


def _saved_numels(fn, args, kw):
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    leaves = {k: (None if v is None else v.clone().requires_grad_()) for k, v in args.items()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(**leaves, **kw)
    return sizes


@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_cpu_backend_keeps_no_state_tensors(path, monkeypatch):
    """Nothing of size B*ED*L*N is kept for backward by `cpu`; the reference does keep such tensors."""
    if path == "kernel":
        require_kernel()
    else:
        monkeypatch.setattr(scan, "kernel_available", lambda: False)
    args, kw = make_inputs(16, batch=4, ed=24, n=16)
    big = 4 * 24 * 16 * 16
    assert max(_saved_numels(ref_fn, args, kw)) >= big  # the detector sees state tensors when they exist
    saved = _saved_numels(cpu_fn, args, kw)
    print(f"{path}: largest saved tensor {max(saved)} elements, state tensor {big}")
    assert max(saved) < big


def test_low_precision_inputs_return_their_dtype():
    args, kw = make_inputs(5)
    half = {k: (None if v is None else v.bfloat16()) for k, v in args.items()}
    out = scan.selective_scan(**half, **kw, backend="cpu")
    ref = scan.selective_scan_ref(**{k: (None if v is None else v.float()) for k, v in half.items()}, **kw)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())


def test_unknown_backend_is_refused():
    args, kw = make_inputs(2)
    with pytest.raises(BackendError, match="model.scan = 'fast': not a backend; choose one of auto, ref, cpu, cuda"):
        scan.selective_scan(**args, **kw, backend="fast")


def test_auto_resolves_to_cpu_on_cpu_tensors():
    assert scan.scan_backend("auto", torch.device("cpu")) == "cpu"
    assert scan.scan_backend("ref", torch.device("cpu")) == "ref"


def test_auto_resolves_to_cuda_only_with_mamba_ssm_and_cuda_tensors(monkeypatch):
    monkeypatch.setattr(scan, "cuda_available", lambda: True)
    assert scan.scan_backend("auto", torch.device("cuda")) == "cuda"
    assert scan.scan_backend("auto", torch.device("cpu")) == "cpu"
    monkeypatch.setattr(scan, "cuda_available", lambda: False)
    assert scan.scan_backend("auto", torch.device("cuda")) == "cpu"


def test_cuda_backend_on_cpu_tensors_names_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(scan, "_mamba_ssm_ops", lambda: (None, None))
    with pytest.raises(BackendError, match="model.scan = 'cuda' cannot run here: got tensors on cpu"):
        scan.scan_backend("cuda", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the error path is for machines without")
def test_cuda_backend_without_gpu_gives_clear_error():
    args, kw = make_inputs(2)
    with pytest.raises(BackendError, match="model.scan = 'cuda' cannot run here: needs a CUDA device"):
        scan.selective_scan(**args, **kw, backend="cuda")


def test_kernel_builds_into_a_fresh_cache_dir(tmp_path, monkeypatch):
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("LVM_CACHE_DIR", str(tmp_path))
    scan._kernel.cache_clear()
    try:
        assert scan.kernel_available()
        assert list((tmp_path / "scan_kernel").glob("scan_*.so"))
        args, kw = make_inputs(5)
        assert_all_close(run(cpu_fn, args, kw), run(ref_fn, args, kw), "fresh build")
    finally:
        scan._kernel.cache_clear()


def test_no_compiler_falls_back_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("LVM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    scan._kernel.cache_clear()
    try:
        with pytest.warns(UserWarning, match="pure-torch path"):
            assert not scan.kernel_available()
        args, kw = make_inputs(5)
        assert_all_close(run(cpu_fn, args, kw), run(ref_fn, args, kw), "no compiler")
    finally:
        scan._kernel.cache_clear()


def test_kernel_can_be_disabled(monkeypatch):
    monkeypatch.setenv("LVM_SCAN_KERNEL", "0")
    scan._kernel.cache_clear()
    try:
        assert not scan.kernel_available()
    finally:
        scan._kernel.cache_clear()


# --------------------------------------------------------------------------- CUDA (skipped without GPU)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("length", LENGTHS)
def test_cpu_backend_on_cuda_tensors_matches_ref(length):
    """The `cpu` backend is pure torch on a CUDA device (the kernel is CPU-only)."""
    args, kw = make_inputs(length)
    on_gpu = {k: (None if v is None else v.cuda()) for k, v in args.items()}
    got = {k: v.cpu() for k, v in run(cpu_fn, on_gpu, kw).items()}
    assert_all_close(got, run(ref_fn, args, kw), f"cpu-on-cuda L={length}")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("length", LENGTHS)
def test_cuda_backend_matches_ref(length):
    if not scan.cuda_available():
        pytest.skip("mamba_ssm is not installed (pip install -e '.[cuda]')")
    args, kw = make_inputs(length)
    on_gpu = {k: (None if v is None else v.cuda()) for k, v in args.items()}
    got = {k: v.cpu() for k, v in run(lambda **a: scan.selective_scan(**a, backend="cuda"), on_gpu, kw).items()}
    assert_all_close(got, run(ref_fn, args, kw), f"cuda L={length}")
