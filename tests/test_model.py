"""lvmlib.model.models: the Mamba block against mambapy (an independent implementation with mamba_ssm's
names), causality, shapes, parameter counts, weight-decay groups, baselines and checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from mambapy.mamba import Mamba as PyMamba
from mambapy.mamba import MambaBlock as PyMambaBlock
from mambapy.mamba import MambaConfig as PyMambaConfig

from lvmlib.core.config import Config, ModelConfig
from lvmlib.core.errors import BackendError, CheckpointError
from lvmlib.model import scan
from lvmlib.model.checkpoint import load_checkpoint, save_checkpoint
from lvmlib.model.models import (
    PRESETS,
    Mamba,
    MambaLVM,
    baseline,
    build_model,
    count_parameters,
    param_groups,
    set_scan,
)

LENGTHS = (1, 5, 16, 64)
RTOL, ATOL = 1e-4, 1e-5  # fp32; ATOL is relative to the reference's largest magnitude
SMALL = dict(d_model=32, n_layers=2, d_state=8, d_conv=4, expand=2)
LEARNED = ("mamba", "two_tower", "amn", "gru", "transformer", "context_mix")
AMN_MAX_LEN_FOR_TEST = 128  # the mixture's logits cover config.MAX_CONTEXT_LEN positions
ALL_KINDS = (*LEARNED, "knn_successor", "copy_last", "context_mean", "global_mean", "ridge")


def small_cfg(**kw) -> ModelConfig:
    return ModelConfig(**{**SMALL, **kw})


def report_and_assert(pairs, label):
    """pairs: {name: (ours, reference)}; prints every error and tolerance first, then asserts."""
    for name, (got, want) in pairs.items():
        print(
            f"{label} {name:28s} max|err| {(got - want).abs().max().item():.2e}  "
            f"atol {ATOL * want.abs().max().item():.2e}  rtol {RTOL:.0e}"
        )
    for name, (got, want) in pairs.items():
        torch.testing.assert_close(
            got, want, rtol=RTOL, atol=ATOL * want.abs().max().item(), msg=lambda m: f"{label} {name}: {m}"
        )


def forward_backward(module, x, seed=1):
    x = x.detach().clone().requires_grad_()
    out = module(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)))
    return out.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


def py_config(n_layers=1, pscan=False):
    return PyMambaConfig(
        d_model=SMALL["d_model"],
        n_layers=n_layers,
        d_state=SMALL["d_state"],
        expand_factor=SMALL["expand"],
        d_conv=SMALL["d_conv"],
        pscan=pscan,
    )


# --------------------------------------------------------------------------- parity with mambapy
@pytest.mark.parametrize("backend", ["cpu", "ref"])
@pytest.mark.parametrize("length", LENGTHS)
def test_block_matches_mambapy(length, backend):
    torch.manual_seed(0)
    ours = Mamba(SMALL["d_model"], SMALL["d_state"], SMALL["d_conv"], SMALL["expand"], scan=backend)
    theirs = PyMambaBlock(py_config())
    theirs.load_state_dict(ours.state_dict())  # same names and shapes: loads strictly
    x = torch.randn(3, length, SMALL["d_model"])
    o1, gx1, gp1 = forward_backward(ours, x)
    o2, gx2, gp2 = forward_backward(theirs, x)
    pairs = {"out": (o1, o2), "d_input": (gx1, gx2)}
    pairs.update({f"d_{n}": (gp1[n], gp2[n]) for n in gp2})
    assert set(gp1) == set(gp2)
    report_and_assert(pairs, f"block {backend} L={length}")


def test_mambapy_weights_load_into_our_block():
    """The other direction: a mambapy block's state_dict loads strictly into ours, same output."""
    torch.manual_seed(1)
    theirs = PyMambaBlock(py_config(pscan=True))
    ours = Mamba(SMALL["d_model"], SMALL["d_state"], SMALL["d_conv"], SMALL["expand"], scan="cpu")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 8, SMALL["d_model"])
    report_and_assert({"out": (ours(x).detach(), theirs(x).detach())}, "mambapy->ours pscan")


@pytest.mark.parametrize("length", [5, 16])
def test_backbone_matches_mambapy_stack(length):
    """Our pre-norm residual stack (`layers.i.norm`, `layers.i.mixer`) equals mambapy's `Mamba`."""
    torch.manual_seed(2)
    model = MambaLVM(small_cfg(scan="cpu"), d_vec=16)
    theirs = PyMamba(py_config(n_layers=SMALL["n_layers"]))
    theirs.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith("layers.")})
    stack = torch.nn.Sequential(*model.layers)
    x = torch.randn(3, length, SMALL["d_model"])
    o1, gx1, gp1 = forward_backward(stack, x)
    o2, gx2, gp2 = forward_backward(theirs, x)
    pairs = {"out": (o1, o2), "d_input": (gx1, gx2)}
    pairs.update({f"d_layers.{n}": (gp1[n], gp2[f"layers.{n}"]) for n in gp1})
    report_and_assert(pairs, f"stack L={length}")


@pytest.mark.parametrize("length", [1, 16])
def test_model_cpu_matches_ref_backend(length):
    """The whole model, every parameter gradient, `cpu` vs `ref` scan."""
    torch.manual_seed(3)
    model = build_model(small_cfg(scan="ref"), 16)
    x = torch.randn(4, length, 16)
    o_ref, gx_ref, gp_ref = forward_backward(model, x)
    model.zero_grad()
    o, gx, gp = forward_backward(set_scan(model, "cpu"), x)
    pairs = {"out": (o, o_ref), "d_input": (gx, gx_ref)}
    pairs.update({f"d_{n}": (gp[n], gp_ref[n]) for n in gp_ref})
    report_and_assert(pairs, f"model cpu/ref L={length}")


@pytest.mark.parametrize("backend", ["cpu", "ref"])
@pytest.mark.parametrize("length", [1, 5, 16])
def test_last_position_path_matches_the_full_stack(length, backend):
    """MambaLVM.forward runs its last layer at the last position only (`last_only`): output and every
    parameter gradient equal reading the full stack's last position."""
    torch.manual_seed(4)
    model = build_model(small_cfg(scan=backend), 16)
    x = torch.randn(3, length, 16)

    def full(ctx):
        h = model.input_proj(ctx)  # (B, L, d_model)
        for layer in model.layers:
            h = layer(h)  # (B, L, d_model)
        return model.head(model.norm_f(h[:, -1]))  # (B, D)

    o_full, gx_full, gp_full = forward_backward(_Fn(model, full), x)
    model.zero_grad()
    o, gx, gp = forward_backward(model, x)
    pairs = {"out": (o, o_full), "d_input": (gx, gx_full)}
    pairs.update({f"d_{n}": (gp[n], gp_full[n]) for n in gp_full})
    assert set(gp) == set(gp_full)
    report_and_assert(pairs, f"last-only {backend} L={length}")


class _Fn(torch.nn.Module):
    """A module around `fn` whose parameters are `model`'s (for forward_backward)."""

    def __init__(self, model, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x):
        return self.fn(x)

    def named_parameters(self, *a, **k):
        return self.model.named_parameters(*a, **k)


# --------------------------------------------------------------------------- structure
def test_parameter_names_and_shapes_are_mamba_ssm_s():
    """mamba_ssm.modules.mamba_simple.Mamba(d_model=32, d_state=8, d_conv=4, expand=2), listed by hand."""
    d, ed, n, r, k = 32, 64, 8, 2, 4
    expected = {
        "in_proj.weight": (2 * ed, d),
        "conv1d.weight": (ed, 1, k),
        "conv1d.bias": (ed,),
        "x_proj.weight": (r + 2 * n, ed),
        "dt_proj.weight": (ed, r),
        "dt_proj.bias": (ed,),
        "A_log": (ed, n),
        "D": (ed,),
        "out_proj.weight": (d, ed),
    }
    block = Mamba(d, n, k, 2)
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == expected


def test_initialisation_follows_the_paper():
    cfg = small_cfg(dt_min=0.002, dt_max=0.05)
    block = build_model(cfg, 16).layers[0].mixer
    torch.testing.assert_close(block.A_log, torch.log(torch.arange(1.0, 9.0)).expand(64, 8))  # S4D-real
    torch.testing.assert_close(block.D, torch.ones(64))
    dt = torch.nn.functional.softplus(block.dt_proj.bias)  # inverse softplus of dt in [dt_min, dt_max]
    assert dt.min() >= 0.002 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    bound = block.dt_rank**-0.5
    assert block.dt_proj.weight.abs().max() <= bound


def mamba_s_count(d_vec: int, d_model=768, n_layers=8, d_state=128, d_conv=4, expand=2) -> int:
    ed, r = expand * d_model, math.ceil(d_model / 16)
    block = (
        d_model * 2 * ed + ed * d_conv + ed + ed * (r + 2 * d_state) + r * ed + ed + ed * d_state + ed + ed * d_model
    )
    return (
        n_layers * (block + d_model)  # + each block's RMSNorm weight
        + (d_vec * d_model + d_model)
        + d_model
        + (d_model * d_vec + d_vec)
    )  # in, norm_f, head


@pytest.mark.parametrize("d_vec", [384, 768])
def test_mamba_s_parameter_count(d_vec):
    model = build_model(ModelConfig(**PRESETS["mamba_s"]), d_vec)
    print(f"mamba_s d_vec={d_vec}: {count_parameters(model):,} parameters")
    assert count_parameters(model) == mamba_s_count(d_vec)
    assert count_parameters(model.layers) == 34_295_808 + 8 * 768  # the 8 blocks alone, ~34.3M


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("length", [1, 5])
def test_every_kind_maps_context_to_a_vector(kind, length):
    model = build_model(small_cfg(kind=kind, amn_hidden=64), 16)
    ctx, tgt = torch.randn(6, length, 16), torch.randn(6, 16)
    if not model.trainable:
        model.fit(ctx, tgt)
    assert model(ctx).shape == (6, 16)
    assert model.encode_bank(torch.randn(9, 16)).shape == (9, 16)
    assert model.retrieval_space == ("learned" if kind == "two_tower" else "bank")
    assert model.trainable == (kind in LEARNED)


def test_two_tower_learned_space():
    model = build_model(small_cfg(kind="two_tower", tower_dim=12), 16)
    assert model(torch.randn(3, 5, 16)).shape == (3, 12)
    assert model.encode_bank(torch.randn(7, 16)).shape == (7, 12)
    same = build_model(small_cfg(kind="two_tower"), 16)  # tower_dim 0: the passage tower starts as identity
    bank = torch.randn(5, 16)
    torch.testing.assert_close(same.encode_bank(bank), bank)


@pytest.mark.parametrize("d_vec", [384, 768])
def test_amn_is_small(d_vec):
    n = count_parameters(build_model(ModelConfig(kind="amn"), d_vec))
    print(f"amn d_vec={d_vec}: {n:,} parameters")
    assert 0.9e6 <= n <= 2.1e6


@pytest.mark.parametrize("backend", ["cpu", "ref"])
@pytest.mark.parametrize("kind", ["mamba", "two_tower"])
def test_causality(kind, backend):
    """Each position's output is unchanged by any change to later inputs."""
    torch.manual_seed(4)
    model = build_model(small_cfg(kind=kind, scan=backend), 16)
    lvm = model.query if kind == "two_tower" else model
    x = torch.randn(2, 9, 16)
    variants = [x]  # variant t+1: every input after position t replaced
    for t in range(8):
        x2 = x.clone()
        x2[:, t + 1 :] = torch.randn(2, 8 - t, 16)
        variants.append(x2)
    with torch.no_grad():
        outs = lvm.backbone(torch.cat(variants)).view(9, 2, 9, -1)  # (variant, B, L, d_model)
    for t in range(8):
        a, b = outs[0], outs[t + 1]
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
        assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-3  # later positions do see the change


@pytest.mark.parametrize("kind", ["gru", "transformer"])
def test_controls_are_causal_and_read_the_whole_context(kind):
    """gru / transformer (the controls of issue 30): the prediction from a context does not change when
    positions after it change (a longer context's prefix gives the prefix's prediction), and it does
    change with the first position (the whole context is read)."""
    torch.manual_seed(3)
    model = build_model(small_cfg(kind=kind, residual="none"), 16).eval()
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        full = model(x)
        prefix = model(x[:, :4])
        x2 = x.clone()
        x2[:, 4:] = torch.randn(2, 3, 16)
        torch.testing.assert_close(model(x2[:, :4]), prefix, rtol=0, atol=0)
        x3 = x.clone()
        x3[:, 0] = torch.randn(2, 16)
        assert (model(x3) - full).abs().max() > 1e-4
    if kind == "transformer":  # the causal mask: position 3's hidden state ignores positions 4..
        with torch.no_grad():
            h = model.input_proj(x) + model.pos[:7].flip(0)
            mask = torch.nn.Transformer.generate_square_subsequent_mask(7)
            a = model.seq(h, mask=mask, is_causal=True)[:, 3]
            h2 = h.clone()
            h2[:, 4:] += 1.0
            torch.testing.assert_close(model.seq(h2, mask=mask, is_causal=True)[:, 3], a, rtol=1e-5, atol=1e-5)


def test_context_mix_kind_is_the_mixture_alone_and_learns():
    """context_mix kind = the skip alone: at init_last 0 the context mean exactly; one gradient step on
    targets equal to the last vector moves weight toward the last position."""
    model = build_model(small_cfg(kind="context_mix", mix_init_last=0.0), 16)
    ctx = torch.randn(8, 5, 16)
    torch.testing.assert_close(model(ctx), ctx.mean(1))
    assert count_parameters(model) == AMN_MAX_LEN_FOR_TEST
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = (1 - torch.nn.functional.cosine_similarity(model(ctx), ctx[:, -1])).mean()
    loss.backward()
    opt.step()
    w = model.skip.weights(5)
    assert w[-1] > 0.2 and w[-1] == w.max()


def test_knn_successor_averages_the_successors_of_the_nearest_last_vectors(tmp_path):
    """k=1: a query whose last vector is (a scaled copy of) train window i's last vector predicts window i's
    target; k=2 the mean of the two nearest windows' targets; the fit survives a checkpoint round trip."""
    from lvmlib.model.models import KNNSuccessor

    torch.manual_seed(0)
    ctx, tgt = torch.randn(50, 5, 16), torch.randn(50, 16)
    m1 = KNNSuccessor(16, k=1).fit(ctx, tgt)
    q = torch.randn(3, 5, 16)
    q[:, -1] = 2.0 * ctx[[7, 19, 42], -1]
    torch.testing.assert_close(m1(q), tgt[[7, 19, 42]])
    m2 = KNNSuccessor(16, k=2).fit(ctx, tgt)
    sims = torch.nn.functional.normalize(q[:, -1], dim=-1) @ torch.nn.functional.normalize(ctx[:, -1], dim=-1).T
    top = sims.topk(2, dim=1).indices
    torch.testing.assert_close(m2(q), tgt[top].mean(1))
    cfg = full_cfg(kind="knn_successor", knn_k=2)
    model = build_model(cfg.model, 16).fit(ctx, tgt)
    save_checkpoint(tmp_path / "best.pt", model, cfg, 16, epoch=1, val_cosine=0.0)
    loaded, _, _ = load_checkpoint(tmp_path / "best.pt")
    torch.testing.assert_close(loaded(q), m2(q))


def test_param_groups_exclude_the_right_parameters():
    for kind in ("mamba", "two_tower", "amn", "gru", "transformer"):
        model = build_model(small_cfg(kind=kind, amn_hidden=64), 16)
        groups = param_groups(model, 0.1)
        decay = dict(zip(groups[0]["param_names"], groups[0]["params"]))
        no_decay = dict(zip(groups[1]["param_names"], groups[1]["params"]))
        assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
        assert set(decay).isdisjoint(no_decay)
        assert set(decay) | set(no_decay) == {n for n, _ in model.named_parameters()}
        for name in no_decay:
            last = name.rsplit(".", 1)[-1]
            assert last in ("A_log", "D", "bias", "pos") or "bias" in last or "norm" in name, name
        for name, p in decay.items():
            assert p.dim() >= 2 and not name.endswith(("A_log", "bias")) and "norm" not in name, name
        torch.optim.AdamW(groups, lr=1e-3).step()  # AdamW accepts the groups as they are
    names = param_groups(build_model(small_cfg(), 16), 0.1)[1]["param_names"]
    assert {
        "layers.0.mixer.A_log",
        "layers.0.mixer.D",
        "layers.0.norm.weight",
        "norm_f.weight",
        "head.bias",
        "layers.1.mixer.dt_proj.bias",
    } <= set(names)
    assert param_groups(baseline("copy_last", 16), 0.1) == []


# --------------------------------------------------------------------------- closed-form baselines
def test_simple_baselines_on_hand_made_context():
    ctx = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]])  # (1, 3, 2)
    torch.testing.assert_close(baseline("copy_last", 2)(ctx), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(baseline("context_mean", 2)(ctx), torch.tensor([[4 / 3, 2.0]]))
    gm = baseline("global_mean", 2)
    with pytest.raises(RuntimeError, match="not fitted"):
        gm(ctx)
    gm.fit(ctx.repeat(2, 1, 1), torch.tensor([[1.0, 2.0], [3.0, -2.0]]))
    torch.testing.assert_close(gm(torch.zeros(3, 5, 2)), torch.tensor([[2.0, 0.0]] * 3))


def test_ridge_recovers_a_known_linear_map():
    g = torch.Generator().manual_seed(0)
    k, d, n = 3, 4, 500
    W = torch.randn(k * d, d, generator=g)
    b = torch.randn(d, generator=g)
    ctx = torch.randn(n, k, d, generator=g)
    tgt = ctx.reshape(n, -1) @ W + b
    ridge = baseline("ridge", d, ridge_alpha=1e-6).fit(ctx, tgt, chunk=128)  # chunks: accumulation path
    print(f"ridge max|W err| {(ridge.weight - W).abs().max():.2e}, max|b err| {(ridge.bias - b).abs().max():.2e}")
    torch.testing.assert_close(ridge.weight, W, rtol=0, atol=1e-3)
    torch.testing.assert_close(ridge.bias, b, rtol=0, atol=1e-3)
    test = torch.randn(7, k, d, generator=g)
    torch.testing.assert_close(ridge(test), test.reshape(7, -1) @ W + b, rtol=0, atol=1e-3)
    strong = baseline("ridge", d, ridge_alpha=1e6).fit(ctx, tgt)  # heavy penalty: shrinks to the mean
    assert strong.weight.abs().max() < 1e-2
    with pytest.raises(ValueError, match="fitted on contexts of 3 vectors"):
        ridge(torch.randn(2, 5, d))


# --------------------------------------------------------------------------- checkpoints
def full_cfg(**model_kw) -> Config:
    cfg = Config()
    cfg.model = small_cfg(**model_kw)
    return cfg


@pytest.mark.parametrize("kind", ["mamba", "two_tower", "amn", "ridge", "gru", "transformer", "context_mix"])
def test_checkpoint_round_trip(tmp_path, kind):
    cfg = full_cfg(kind=kind, amn_hidden=64)
    model = build_model(cfg.model, 16)
    ctx = torch.randn(20, 5, 16)
    if kind == "ridge":
        model.fit(ctx, torch.randn(20, 16))
    path = tmp_path / "best.pt"
    save_checkpoint(path, model, cfg, 16, epoch=3, val_cosine=0.5)
    loaded, cfg2, ckpt = load_checkpoint(path)
    assert cfg2.to_dict() == cfg.to_dict() and ckpt["epoch"] == 3 and ckpt["d_vec"] == 16
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ctx), model(ctx), rtol=0, atol=0)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file


def test_checkpoint_of_another_shape_is_refused(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, build_model(small_cfg(), 16), full_cfg(), 16)
    with pytest.raises(CheckpointError, match=r"best\.pt.*d_model=48.*input_proj\.weight"):
        load_checkpoint(path, model_cfg=small_cfg(d_model=48))
    with pytest.raises(CheckpointError, match=r"best\.pt.*width 16, asked for width 384"):
        load_checkpoint(path, d_vec=384)
    cfg = full_cfg()
    cfg.model = cfg.model.model_copy(update={"n_layers": 3})  # stored config disagrees with the weights
    save_checkpoint(path, build_model(small_cfg(), 16), cfg, 16)
    with pytest.raises(CheckpointError, match=r"best\.pt.*missing.*layers\.2"):
        load_checkpoint(path)


def test_checkpoint_scan_backend_is_a_runtime_choice(tmp_path):
    """A checkpoint trained with the `cuda` scan loads where mamba_ssm cannot run (as `auto`)."""
    path = tmp_path / "best.pt"
    model = build_model(small_cfg(), 16)
    save_checkpoint(path, model, full_cfg(scan="cuda"), 16)
    loaded, cfg, _ = load_checkpoint(path, scan="ref")
    assert cfg.model.scan == "cuda" and {m.scan for m in loaded.modules() if isinstance(m, Mamba)} == {"ref"}
    if not scan.cuda_available():
        loaded, _, _ = load_checkpoint(path)
        assert {m.scan for m in loaded.modules() if isinstance(m, Mamba)} == {"auto"}
        x = torch.randn(2, 5, 16)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing", "not_ours"])
def test_damaged_checkpoint_names_the_file(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(path, build_model(small_cfg(), 16), full_cfg(), 16)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "missing":
        path.unlink()
    else:
        torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"last\.pt"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- CUDA
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the error path is for machines without")
def test_cuda_scan_without_gpu_is_refused_at_build():
    with pytest.raises(BackendError, match="needs a CUDA device"):
        build_model(small_cfg(scan="cuda"), 16)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("backend", ["cpu", "ref", "auto"])
def test_model_on_cuda_matches_cpu(backend):
    torch.manual_seed(5)
    model = build_model(small_cfg(scan="ref"), 16)
    x = torch.randn(3, 5, 16)
    o_cpu, gx_cpu, gp_cpu = forward_backward(model, x)
    gpu = set_scan(build_model(small_cfg(), 16), backend).cuda()
    gpu.load_state_dict(model.state_dict())
    o, gx, gp = forward_backward(gpu, x.cuda())
    pairs = {"out": (o.cpu(), o_cpu), "d_input": (gx.cpu(), gx_cpu)}
    pairs.update({f"d_{n}": (gp[n].cpu(), gp_cpu[n]) for n in gp_cpu})
    report_and_assert(pairs, f"cuda {backend}")


# --------------------------------------------------------------------------- model.residual
@pytest.mark.parametrize("kind", ["mamba", "amn", "two_tower", "gru", "transformer"])
@pytest.mark.parametrize("residual", ["last", "context_mix"])
def test_residual_step0_equals_the_skip_exactly(kind, residual):
    """With a residual path, the untrained model *is* the trivial predictor: copy-last, or the
    initial context mixture (weight ~0.93 on the last position)."""
    from lvmlib.core.config import load_config
    from lvmlib.model.models import build_model

    cfg = load_config(
        None,
        [
            f"model.kind={kind}",
            f"model.residual={residual}",
            "model.d_model=16",
            "model.n_layers=1",
            "model.d_state=4",
            "model.amn_hidden=8",
        ],
    ).model
    torch.manual_seed(0)
    model = build_model(cfg, 12).eval()
    ctx = torch.randn(7, 5, 12)
    with torch.no_grad():
        pred = model(ctx)
    if residual == "last":
        assert torch.equal(pred, ctx[:, -1])
    else:
        w = torch.softmax(torch.tensor([0.0, 0.0, 0.0, 0.0, cfg.mix_init_last]), dim=0)
        assert w[-1] > 0.9
        assert torch.allclose(pred, torch.einsum("l,bld->bd", w, ctx), atol=1e-6)
    # and the correction is trainable: one step moves the prediction away from the skip
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    loss = (model(ctx) - torch.randn(7, 12)).pow(2).sum()
    loss.backward()
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(model.eval()(ctx), pred)


def test_residual_none_is_the_seed_model():
    from lvmlib.core.config import load_config
    from lvmlib.model.models import build_model

    cfg = load_config(None, ["model.d_model=16", "model.n_layers=1", "model.d_state=4"]).model
    torch.manual_seed(0)
    model = build_model(cfg, 12)
    assert model.skip is None and float(model.head.weight.detach().abs().sum()) > 0
    assert not any("skip" in k for k in model.state_dict())


def test_residual_refuses_a_tower_of_another_width():
    from lvmlib.core.config import load_config
    from lvmlib.model.models import build_model

    cfg = load_config(
        None,
        [
            "model.kind=two_tower",
            "model.residual=last",
            "model.tower_dim=8",
            "model.d_model=16",
            "model.n_layers=1",
            "model.d_state=4",
        ],
    ).model
    with pytest.raises(ValueError, match="tower_dim"):
        build_model(cfg, 12)
