"""Latent vector models: a context of chunk vectors (B, L, D) -> the next chunk's vector (B, D).

Shape glossary (letters of Gu & Dao, "Mamba", 2023, and of mamba_ssm):
    B  batch                      L  context length (K chunks)     D  vector width (d_vec, e.g. 384)
    d_model  residual width       ED inner width = expand * d_model
    N  state size (d_state)       R  dt rank = ceil(d_model / 16) unless set
    M  bank rows                  D' retrieval width (two_tower's tower_dim, else D)

Kinds (`model.kind`), one contract: forward (B, L, D) -> (B, D'); `encode_bank` (M, D) -> (M, D');
`trainable` (False for closed-form baselines); `retrieval_space` "bank" (predictions live beside the
bank vectors) or "learned" (two_tower: the bank must go through `encode_bank` first).
- mamba: input projection D -> d_model, n_layers pre-norm residual Mamba-1 blocks, final RMSNorm,
  head d_model -> D, read at the last position. RMSNorm, as mamba_ssm's released LMs and mambapy, so
  a whole backbone (`layers.i.norm`, `layers.i.mixer`) loads into either.
- `model.residual` (mamba, two_tower's query tower, amn): `none` is the seed (the network alone);
  `last` / `context_mix` add a skip from the input vectors — the last context vector, or a learned
  softmax mixture of the K positions that starts near copy-last — and zero-initialise the output head,
  so at step 0 the model *is* that trivial predictor and training learns a correction to it.
- two_tower: query tower = the mamba model above (output D'); passage tower = residual MLP on chunks.
- amn: attention over the context vectors (query = last one) + a residual MLP; ~1-2M parameters.
- gru, transformer: controls for "is it the SSM?" (issue 30): mamba's input projection, final norm, head and
  skip around torch's own `nn.GRU` (n_layers, width d_model) or `nn.TransformerEncoder` (n_layers pre-norm
  causal layers, d_model / 64 heads, learned positions, feed-forward expand x d_model), read at the last position.
- context_mix: the skip of `model.residual: context_mix` alone, trained (K + 0 parameters that matter: the
  mixture weights), the cheapest learned predictor; no sequence model, no head.
- copy_last, context_mean, global_mean, ridge, knn_successor: closed-form baselines with `fit(ctx, tgt)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lvmlib.core.config import BASELINES, MAX_CONTEXT_LEN, MODEL_KINDS, ModelConfig
from lvmlib.core.errors import ModelError
from lvmlib.model.scan import _mamba_ssm_ops, scan_backend, selective_scan

PRESETS = {"mamba_s": dict(d_model=768, n_layers=8, d_state=128, d_conv=4, expand=2)}
BASELINE_KINDS = BASELINES  # the closed-form baselines (config.BASELINES: the one list)
AMN_MAX_LEN = MAX_CONTEXT_LEN  # amn: longest context its relative-position embedding covers (data.context_len's cap)
_BANK_CHUNK = 65536  # rows per passage-tower call in encode_bank


# --------------------------------------------------------------------------- the skip from the inputs
class ContextSkip(nn.Module):
    """The residual path of `model.residual`: (B, L, D) -> (B, D).

    last: ctx[:, -1] (copy-last). context_mix: softmax(mix_logits) over the L positions, counted from the
    end (mix_logits[0] = the last position), initialised to [mix_init_last, 0, 0, ...] so the mixture
    starts near copy-last (weight ~0.93 on the last of 5 with the default 4.0)."""

    def __init__(self, kind: str, init_last: float = 4.0):
        super().__init__()
        if kind not in ("last", "context_mix"):
            raise ValueError(f"ContextSkip: kind must be 'last' or 'context_mix', got {kind!r}")
        self.kind = kind
        if kind == "context_mix":
            logits = torch.zeros(AMN_MAX_LEN)  # (Lmax), 0 = last position
            logits[0] = init_last
            self.mix_logits = nn.Parameter(logits)
            self.mix_logits._no_weight_decay = True

    def weights(self, length: int) -> torch.Tensor:
        """(L) mixture weights in context order (the last entry weighs the last position)."""
        if length > AMN_MAX_LEN:
            raise ModelError(
                f"model.residual = context_mix supports contexts up to {AMN_MAX_LEN} vectors, got L={length} "
                "(data.context_len)"
            )
        return torch.softmax(self.mix_logits[:length].flip(0), dim=0)  # (L)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        if self.kind == "last":
            return ctx[:, -1]  # (B, D)
        return torch.einsum("l,bld->bd", self.weights(ctx.shape[1]).to(ctx.dtype), ctx)  # (B, D)


def _skip(cfg: ModelConfig, d_vec: int, d_out: int) -> ContextSkip | None:
    if cfg.residual == "none":
        return None
    if d_out != d_vec:
        raise ModelError(
            f"model.residual={cfg.residual!r} adds the context vectors (width {d_vec}) to the "
            f"prediction, which has width {d_out}: set model.tower_dim to 0 or {d_vec}"
        )
    return ContextSkip(cfg.residual, cfg.mix_init_last)


def _zero_(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


# --------------------------------------------------------------------------- the Mamba-1 block
class Mamba(nn.Module):
    """Selective SSM mixer; mirrors mamba_ssm.modules.mamba_simple.Mamba (same parameter names,
    shapes and initialisation), so state_dicts load both ways. (B, L, d_model) -> (B, L, d_model)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int = 0,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan: str = "auto",
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.scan = scan
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        # Δ bias = softplus⁻¹(dt), dt log-uniform in [dt_min, dt_max] (Gu & Dao, §3.6 / mamba_simple)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(
            min=dt_init_floor
        )  # (ED)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # (ED)
        self.dt_proj.bias._no_reinit = True
        # S4D-real: A[:, n] = -(n + 1), stored as log(-A) so A stays negative
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # (ED, N)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner))  # (ED)
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, hidden: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model), or (B, 1, d_model) with `last_only`: only the last
        position's output, which skips the gate branch z, the gating and out_proj at the other L-1
        positions (the scan still runs over all of them). Same values as `forward(hidden)[:, -1:]`."""
        backend = scan_backend(self.scan, hidden.device)
        A = -torch.exp(self.A_log.float())  # (ED, N)
        if backend == "cuda" and _mamba_ssm_ops()[1] is not None:
            out = _mamba_ssm_ops()[1](  # mamba_inner_fn: conv, projections, scan and gate fused
                self.in_proj(hidden).transpose(1, 2),
                self.conv1d.weight,
                self.conv1d.bias,
                self.x_proj.weight,
                self.dt_proj.weight,
                self.out_proj.weight,
                self.out_proj.bias,
                A,
                None,
                None,
                self.D.float(),
                delta_bias=self.dt_proj.bias.float(),
                delta_softplus=True,
            )  # (B, L, d_model)
            return out[:, -1:] if last_only else out
        # Channels-last throughout: the projections read (B, L, .) rows; the scan takes (B, ED, L) views.
        if last_only:
            w_x, w_z = self.in_proj.weight.chunk(2)  # (ED, d_model) each
            x, z = F.linear(hidden, w_x), F.linear(hidden[:, -1:], w_z)  # (B, L, ED), (B, 1, ED)
        else:
            x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, L, ED) each
        x = F.silu(causal_conv1d(x, self.conv1d.weight, self.conv1d.bias))  # (B, L, ED)
        dt, Bm, Cm = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, ED); its bias is added inside the scan
        y = selective_scan(
            x.transpose(1, 2),
            dt.transpose(1, 2),
            A,
            Bm.transpose(1, 2),
            Cm.transpose(1, 2),
            self.D.float(),
            None if last_only else z.transpose(1, 2),
            self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=backend,
        )  # (B, ED, L)
        if last_only:
            y = y[:, :, -1:] * F.silu(z.transpose(1, 2))  # (B, ED, 1)
        return self.out_proj(y.transpose(1, 2))  # (B, L or 1, d_model)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Depthwise causal convolution over time, channels last: (B, L, ED), weight (ED, 1, d_conv)
    -> (B, L, ED); equals causal_conv1d's `causal_conv1d_ref` (i.e. nn.Conv1d with left padding
    d_conv-1, cut to L). Written as d_conv shifted multiply-adds: for short L its backward is ~4x
    faster than mkldnn's depthwise convolution_backward on CPU."""
    length, k = x.shape[1], weight.shape[-1]
    xp = F.pad(x, (0, 0, k - 1, 0))  # (B, L+d_conv-1, ED)
    w = weight[:, 0, :].t()  # (d_conv, ED)
    y = xp[:, :length] * w[0] if bias is None else torch.addcmul(bias, xp[:, :length], w[0])  # (B, L, ED)
    for i in range(1, k):
        y = torch.addcmul(y, xp[:, i : i + length], w[i])  # (B, L, ED)
    return y


class Block(nn.Module):
    """Pre-norm residual: x + dropout(mixer(norm(x))); mamba_ssm's `Block` / mambapy's `ResidualBlock`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = nn.RMSNorm(cfg.d_model, eps=1e-5)
        self.mixer = Mamba(
            cfg.d_model,
            cfg.d_state,
            cfg.d_conv,
            cfg.expand,
            cfg.dt_rank,
            cfg.dt_min,
            cfg.dt_max,
            cfg.dt_init_floor,
            cfg.scan,
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        if last_only:  # the last position only (see Mamba.forward)
            return x[:, -1:] + self.drop(self.mixer(self.norm(x), last_only=True))  # (B, 1, d_model)
        return x + self.drop(self.mixer(self.norm(x)))  # (B, L, d_model)


class MambaLVM(nn.Module):
    """mamba kind: (B, L, D) -> input_proj -> blocks -> norm_f -> head at the last position -> (B, D')."""

    trainable = True
    retrieval_space = "bank"

    def __init__(self, cfg: ModelConfig, d_vec: int, d_out: int | None = None):
        super().__init__()
        self.input_proj = nn.Linear(d_vec, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=1e-5)
        self.head = nn.Linear(cfg.d_model, d_out or d_vec)
        self.skip = _skip(cfg, d_vec, d_out or d_vec)
        if self.skip is not None:
            _zero_(self.head)  # step 0 = the skip alone

    def backbone(self, ctx: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, L, D) -> (B, L, d_model); with `last_only` (B, 1, d_model): the last layer computes only
        the last position, the only one the head reads."""
        h = self.input_proj(ctx)  # (B, L, d_model)
        for i, layer in enumerate(self.layers):
            h = layer(h, last_only=last_only and i == len(self.layers) - 1)  # (B, L or 1, d_model)
        return h

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        out = self.head(self.norm_f(self.backbone(ctx, last_only=True)[:, -1]))  # (B, D')
        return out if self.skip is None else self.skip(ctx) + out  # (B, D')

    def encode_bank(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors  # (M, D)


# --------------------------------------------------------------------------- controls: gru, transformer, context_mix
class SequenceLVM(nn.Module):
    """gru / transformer kind: MambaLVM with torch's sequence model in place of the Mamba blocks:
    (B, L, D) -> input_proj -> nn.GRU or causal nn.TransformerEncoder -> norm_f -> head at the last position."""

    trainable = True
    retrieval_space = "bank"

    def __init__(self, cfg: ModelConfig, d_vec: int):
        super().__init__()
        self.kind = cfg.kind
        self.input_proj = nn.Linear(d_vec, cfg.d_model)
        if cfg.kind == "gru":
            self.seq = nn.GRU(cfg.d_model, cfg.d_model, num_layers=cfg.n_layers, batch_first=True, dropout=cfg.dropout)
        else:
            if cfg.d_model % 64 and cfg.d_model >= 64:
                raise ModelError(f"model.kind = transformer: model.d_model must be a multiple of 64, got {cfg.d_model}")
            layer = nn.TransformerEncoderLayer(
                cfg.d_model,
                max(1, cfg.d_model // 64),
                dim_feedforward=cfg.expand * cfg.d_model,
                dropout=cfg.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.seq = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
            self.pos = nn.Parameter(torch.zeros(AMN_MAX_LEN, cfg.d_model))  # (Lmax, d_model), 0 = last position
            self.pos._no_weight_decay = True
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=1e-5)
        self.head = nn.Linear(cfg.d_model, d_vec)
        self.skip = _skip(cfg, d_vec, d_vec)
        if self.skip is not None:
            _zero_(self.head)  # step 0 = the skip alone

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        h = self.input_proj(ctx)  # (B, L, d_model)
        length = ctx.shape[1]
        if self.kind == "gru":
            h = self.seq(h)[0]  # (B, L, d_model)
        else:
            if length > AMN_MAX_LEN:
                raise ModelError(
                    f"model.kind = transformer supports contexts up to {AMN_MAX_LEN} vectors, got L={length} "
                    "(data.context_len)"
                )
            mask = nn.Transformer.generate_square_subsequent_mask(length, device=ctx.device, dtype=h.dtype)
            h = self.seq(h + self.pos[:length].flip(0), mask=mask, is_causal=True)  # (B, L, d_model)
        out = self.head(self.norm_f(h[:, -1]))  # (B, D)
        return out if self.skip is None else self.skip(ctx) + out  # (B, D)

    def encode_bank(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors  # (M, D)


class MixOnly(nn.Module):
    """context_mix kind: softmax(mix_logits)-weighted mean of the K context vectors, nothing else -> (B, D).
    Starts as `model.mix_init_last` says (0: the context mean; 4: ~copy-last)."""

    trainable = True
    retrieval_space = "bank"

    def __init__(self, cfg: ModelConfig, d_vec: int):
        super().__init__()
        self.skip = ContextSkip("context_mix", cfg.mix_init_last)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        return self.skip(ctx)  # (B, D)

    def encode_bank(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors  # (M, D)


# --------------------------------------------------------------------------- two_tower, amn
class PassageTower(nn.Module):
    """Residual MLP on chunk vectors (M, D) -> (M, D'); the last layer starts at zero, so with D' = D
    the learned space starts as the bank space."""

    def __init__(self, d_vec: int, hidden: int, d_out: int):
        super().__init__()
        self.skip = nn.Identity() if d_out == d_vec else nn.Linear(d_vec, d_out, bias=False)
        self.fc1 = nn.Linear(d_vec, hidden)
        self.fc2 = nn.Linear(hidden, d_out)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.skip(v) + self.fc2(F.gelu(self.fc1(v)))  # (M, D')


class TwoTower(nn.Module):
    """two_tower kind (seed's Option 4): query = Mamba over the context, passage = MLP over chunks;
    forward gives the query in the learned space, `encode_bank` maps bank rows (and targets) there."""

    trainable = True
    retrieval_space = "learned"

    def __init__(self, cfg: ModelConfig, d_vec: int):
        super().__init__()
        d_out = cfg.tower_dim or d_vec
        self.query = MambaLVM(cfg, d_vec, d_out)
        self.passage = PassageTower(d_vec, cfg.d_model, d_out)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        return self.query(ctx)  # (B, D')

    def encode_bank(self, vectors: torch.Tensor) -> torch.Tensor:
        if vectors.shape[0] <= _BANK_CHUNK:
            return self.passage(vectors)  # (M, D')
        return torch.cat([self.passage(v) for v in vectors.split(_BANK_CHUNK)])  # (M, D')


class AMN(nn.Module):
    """amn kind (seed's Option 5): softmax attention of the last context vector over all of them
    (with a learned embedding of the distance to the end), mixture + residual MLP -> (B, D)."""

    trainable = True
    retrieval_space = "bank"

    def __init__(self, cfg: ModelConfig, d_vec: int, d_att: int = 256):
        super().__init__()
        self.q = nn.Linear(d_vec, d_att)
        self.k = nn.Linear(d_vec, d_att)
        self.pos = nn.Parameter(torch.zeros(AMN_MAX_LEN, d_att))  # (Lmax, d_att), 0 = last position
        self.pos._no_weight_decay = True
        self.mlp = nn.Sequential(
            nn.Linear(d_vec, cfg.amn_hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.amn_hidden, d_vec)
        )
        self.skip = _skip(cfg, d_vec, d_vec)
        self.head = None if self.skip is None else _zero_(nn.Linear(d_vec, d_vec))  # step 0 = the skip alone

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        length = ctx.shape[1]
        if length > AMN_MAX_LEN:
            raise ModelError(
                f"model.kind = amn supports contexts up to {AMN_MAX_LEN} vectors, got L={length} (data.context_len)"
            )
        keys = self.k(ctx) + self.pos[:length].flip(0)  # (B, L, d_att)
        query = self.q(ctx[:, -1])  # (B, d_att)
        att = torch.softmax(torch.einsum("bla,ba->bl", keys, query) / keys.shape[-1] ** 0.5, dim=1)  # (B, L)
        mix = torch.einsum("bl,bld->bd", att, ctx)  # (B, D)
        out = mix + self.mlp(mix)  # (B, D)
        return out if self.skip is None else self.skip(ctx) + self.head(out)  # (B, D)

    def encode_bank(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors  # (M, D)


# --------------------------------------------------------------------------- closed-form baselines
class _Baseline(nn.Module):
    """Closed-form predictor: nothing to train (`trainable = False`), `fit` on train windows."""

    trainable = False
    retrieval_space = "bank"
    sized_by_fit: tuple[str, ...] = ()  # buffers whose shape fit() sets: a checkpoint's shape for them loads

    def __init__(self, d_vec: int):
        super().__init__()
        self.d_vec = d_vec

    def fit(self, ctx: torch.Tensor, tgt: torch.Tensor) -> _Baseline:
        return self

    def encode_bank(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors  # (M, D)

    def _check(self, ctx: torch.Tensor) -> None:
        if ctx.dim() != 3 or ctx.shape[-1] != self.d_vec:
            raise ModelError(f"{type(self).__name__}: expected context (B, L, {self.d_vec}), got {tuple(ctx.shape)}")


class CopyLast(_Baseline):
    def forward(self, ctx):
        self._check(ctx)
        return ctx[:, -1]  # (B, D)


class ContextMean(_Baseline):
    def forward(self, ctx):
        self._check(ctx)
        return ctx.mean(dim=1)  # (B, D)


class GlobalMean(_Baseline):
    """Predicts the mean train target for every query."""

    def __init__(self, d_vec: int):
        super().__init__(d_vec)
        self.register_buffer("mean", torch.full((d_vec,), float("nan")))  # (D), NaN until fitted

    def fit(self, ctx, tgt):
        tgt = torch.as_tensor(tgt)
        self.mean.copy_(tgt.double().mean(dim=0).to(self.mean))  # (D)
        return self

    def forward(self, ctx):
        self._check(ctx)
        if torch.isnan(self.mean).any():
            raise RuntimeError("global_mean baseline is not fitted: call fit(ctx, tgt) on train windows")
        return self.mean.to(ctx.dtype).expand(ctx.shape[0], -1)  # (B, D)


class Ridge(_Baseline):
    """Linear map from the flattened context (B, L*D) to the target (B, D), fitted in closed form:
    W = (XcᵀXc + αI)⁻¹ XcᵀYc on centred data (intercept not penalised), float64 accumulation."""

    sized_by_fit = ("weight",)

    def __init__(self, d_vec: int, alpha: float = 1.0):
        super().__init__(d_vec)
        self.alpha = alpha
        self.register_buffer("weight", torch.zeros(0, d_vec))  # (L*D, D); sized by fit or load
        self.register_buffer("bias", torch.zeros(d_vec))  # (D)

    @staticmethod
    def moments(ctx, tgt, chunk: int = 8192) -> tuple[torch.Tensor, ...]:
        """(XcᵀXc (L*D, L*D), XcᵀYc (L*D, D), x_mean, y_mean) of centred data, float64, in row chunks."""
        ctx, tgt = torch.as_tensor(ctx), torch.as_tensor(tgt)
        n = ctx.shape[0]
        X = ctx.reshape(n, -1)  # (N, L*D), a view
        x_mean = X.double().mean(0)  # (L*D)
        y_mean = tgt.double().mean(0)  # (D)
        xtx = torch.zeros(X.shape[1], X.shape[1], dtype=torch.float64)  # (L*D, L*D)
        xty = torch.zeros(X.shape[1], tgt.shape[1], dtype=torch.float64)  # (L*D, D)
        for s in range(0, n, chunk):
            xc = X[s : s + chunk].double() - x_mean  # (chunk, L*D)
            xtx += xc.T @ xc
            xty += xc.T @ (tgt[s : s + chunk].double() - y_mean)
        return xtx, xty, x_mean, y_mean

    def solve(self, moments: tuple[torch.Tensor, ...]) -> Ridge:
        """Fit from `moments(...)` with this model's alpha (the moments are not modified)."""
        xtx, xty, x_mean, y_mean = moments
        w = torch.linalg.solve(xtx + self.alpha * torch.eye(len(xtx), dtype=xtx.dtype), xty)  # (L*D, D)
        self.weight = w.float()
        self.bias = (y_mean - x_mean @ w).float()  # (D)
        return self

    def fit(self, ctx, tgt, chunk: int = 8192):
        return self.solve(self.moments(ctx, tgt, chunk))

    def forward(self, ctx):
        self._check(ctx)
        if self.weight.numel() == 0:
            raise RuntimeError("ridge baseline is not fitted: call fit(ctx, tgt) on train windows")
        flat = ctx.reshape(ctx.shape[0], -1)  # (B, L*D)
        if flat.shape[1] != self.weight.shape[0]:
            raise ModelError(
                f"ridge was fitted on contexts of {self.weight.shape[0] // self.d_vec} vectors, got {ctx.shape[1]}"
            )
        return flat @ self.weight.to(flat) + self.bias.to(flat)  # (B, D)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        w = state_dict.get(prefix + "weight")
        if w is not None and w.dim() == 2 and w.shape[1] == self.d_vec and w.shape[0] % self.d_vec == 0:
            self.weight = torch.empty_like(w)  # the context length is learned from the checkpoint
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LastBlend(nn.Module):
    """`eval.blend_last`: a model's L2-normalised prediction plus beta x the L2-normalised last context vector
    (B, L, D) -> (B, D) — a predictor that leans on copy_last by a fixed amount (beta 1: equal weight). Wraps a
    trained model at evaluation; nothing of it is trained or saved."""

    def __init__(self, model: nn.Module, beta: float):
        super().__init__()
        if getattr(model, "retrieval_space", "bank") != "bank":
            raise ModelError("eval.blend_last needs predictions in the bank's space (not two_tower's learned space)")
        self.inner, self.beta = model, beta
        self.trainable = getattr(model, "trainable", True)
        self.retrieval_space = "bank"

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.inner(ctx), dim=-1) + self.beta * F.normalize(ctx[:, -1], dim=-1)  # (B, D)

    def encode_bank(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors  # (M, D)


def ridge_alpha_on_val(ctx, tgt, val_ctx, val_tgt, alphas: list[float]) -> tuple[Ridge, list[float]]:
    """Ridge with its L2 penalty chosen on val: one fit per alpha on (ctx, tgt) from shared moments, each
    scored by mean cosine to the val targets -> (the ridge of the best alpha, fitted; every alpha's val cosine)."""
    moments = Ridge.moments(ctx, tgt)
    val_ctx, val_tgt = torch.as_tensor(val_ctx), torch.as_tensor(val_tgt)
    fits, scores = [], []
    for a in alphas:
        fits.append(Ridge(tgt.shape[1], a).solve(moments))
        with torch.no_grad():
            scores.append(float(F.cosine_similarity(fits[-1](val_ctx), val_tgt.to(torch.float32), dim=-1).mean()))
    return fits[max(range(len(alphas)), key=lambda i: (scores[i], -i))], scores


class KNNSuccessor(_Baseline):
    """Nearest-neighbour successor: the mean of the successors of the k train windows whose last context
    vector is nearest (cosine) to the query's last context vector. Exact search (`metrics.exact_search`:
    faiss when importable, else torch) over the fitted windows; fit stores their last vectors and targets."""

    sized_by_fit = ("keys", "values")

    def __init__(self, d_vec: int, k: int = 10):
        super().__init__(d_vec)
        self.k = k
        self.register_buffer("keys", torch.zeros(0, d_vec))  # (N, D) L2-normalised last context vectors
        self.register_buffer("values", torch.zeros(0, d_vec))  # (N, D) their successors

    def fit(self, ctx, tgt):
        ctx, tgt = torch.as_tensor(ctx), torch.as_tensor(tgt)
        self.keys = F.normalize(ctx[:, -1].float(), dim=-1)
        self.values = tgt.float().clone()
        return self

    def forward(self, ctx):
        from lvmlib.metrics import exact_search

        self._check(ctx)
        if self.keys.numel() == 0:
            raise ModelError("knn_successor baseline is not fitted: call fit(ctx, tgt) on train windows")
        q = F.normalize(ctx[:, -1].float(), dim=-1).cpu().numpy()  # (B, D)
        _, rows = exact_search(q, self.keys.cpu().numpy(), self.k)  # (B, k)
        return self.values[torch.from_numpy(rows).to(self.values.device)].mean(1).to(ctx)  # (B, D)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.sized_by_fit:  # sized by the checkpoint, as ridge's weight
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


_BASELINES = {
    "copy_last": CopyLast,
    "context_mean": ContextMean,
    "global_mean": GlobalMean,
    "ridge": Ridge,
    "knn_successor": KNNSuccessor,
}


# --------------------------------------------------------------------------- builders and helpers
def build_model(model_cfg: ModelConfig, d_vec: int) -> nn.Module:
    """The `model.kind` model for vectors of width d_vec: forward (B, L, D) -> (B, D')."""
    kind = model_cfg.kind
    if model_cfg.scan == "cuda":
        scan_backend("cuda", torch.device("cuda"))  # fail now, with the reason, not at the first step
    if kind == "mamba":
        return MambaLVM(model_cfg, d_vec)
    if kind == "two_tower":
        return TwoTower(model_cfg, d_vec)
    if kind == "amn":
        return AMN(model_cfg, d_vec)
    if kind in ("gru", "transformer"):
        return SequenceLVM(model_cfg, d_vec)
    if kind == "context_mix":
        return MixOnly(model_cfg, d_vec)
    if kind == "ridge":
        return Ridge(d_vec, model_cfg.ridge_alpha)
    if kind == "knn_successor":
        return KNNSuccessor(d_vec, model_cfg.knn_k)
    if kind in _BASELINES:
        return _BASELINES[kind](d_vec)
    raise ModelError(f"model.kind {kind!r}: not a model; choose one of {', '.join(MODEL_KINDS)}")


def baseline(kind: str, d_vec: int, ridge_alpha: float = 1.0, knn_k: int = 10) -> nn.Module:
    """A closed-form baseline by name (copy_last | context_mean | global_mean | ridge | knn_successor)."""
    if kind not in _BASELINES:
        raise ModelError(f"eval.baselines: unknown baseline {kind!r}; choose one of {BASELINE_KINDS}")
    if kind == "ridge":
        return Ridge(d_vec, ridge_alpha)
    return KNNSuccessor(d_vec, knn_k) if kind == "knn_successor" else _BASELINES[kind](d_vec)


def set_scan(model: nn.Module, backend: str) -> nn.Module:
    """Switch every Mamba block of `model` to another scan backend (weights unchanged)."""
    for m in model.modules():
        if isinstance(m, Mamba):
            m.scan = backend
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_NORMS = (nn.RMSNorm, nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices only; none on A_log, D, norm weights, biases, embeddings
    (or anything marked `_no_weight_decay`, as mamba_ssm does). Empty groups are left out."""
    no_decay_ids = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if (
                isinstance(module, (*_NORMS, nn.Embedding))
                or name in ("bias", "A_log", "D")
                or getattr(p, "_no_weight_decay", False)
                or p.dim() < 2
            ):
                no_decay_ids.add(id(p))
    groups = {True: ([], []), False: ([], [])}
    for name, p in model.named_parameters():
        if p.requires_grad:
            params, names = groups[id(p) not in no_decay_ids]
            params.append(p)
            names.append(name)
    return [
        {"params": params, "param_names": names, "weight_decay": weight_decay if decay else 0.0}
        for decay, (params, names) in groups.items()
        if params
    ]
