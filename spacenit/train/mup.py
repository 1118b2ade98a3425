"""muP (`model.mup=true`): width-aware initialization and per-layer learning rates.

A learning rate tuned at the base width `model.mup_base_dim` (nano's 128) then
carries over to wider models. Yang et al. 2022, "Tensor Programs V: Tuning
Large Neural Networks via Zero-Shot Hyperparameter Transfer" (arXiv
2203.03466): Table 3 (muP for Adam, in its "1/fan_in" form) and section 4
(attention logits scaled by 1/d).

Width: every width of the model (encoder and predictor dims, FFN hidden, head
dim) is its base value times m = model.dim / model.mup_base_dim; the number of
heads stays, so the head dimension grows with m. At m = 1 muP is exactly the
standard parameterization (SP): same init, same learning rates.

Each nn.Linear weight gets a role by which of its dimensions grow with the
width, read off the train module built at the base width and at twice it (on
the meta device); m_in = fan_in / fan_in at the base width:

    role    grows            e.g.                                  init std          AdamW lr   Muon lr
    input   fan_out          month embedding, non-spatial tokens   as SP             x 1        -
    hidden  fan_in, fan_out  transformer blocks, predictor         ~ 1/sqrt(fan_in)  x 1/m_in   x 1/sqrt(m_in)
                             projections, bandset merges
    output  fan_in           projection head's last layer, pixels  ~ 1/fan_in        x 1/m_in   -
    fixed   neither                                                 as SP             x 1        -

Every other parameter (patch-embedding kernels, group / month / register
embeddings, mask tokens, norm gains, biases, the temperature) is vector-like:
SP's init and x 1 (Table 3, "input weights & all biases").

The init column, concretely: SP draws the matrices of `FIXED_STD_MODULES` at a
std that does not depend on the width (0.02): muP multiplies them by
m_in^-1/2. Every other Linear starts at PyTorch's default, std ~ 1/sqrt(fan_in)
(or, bandset merges, as an exact mean): hidden ones stay, output ones are
multiplied by m_in^-1/2, giving ~ 1/fan_in.

Muon (spacenit.train.optim) steps by an orthogonal matrix times
lr * 0.2 * sqrt(max(fan_out, fan_in)): a spectral norm growing as sqrt(m).
x 1/sqrt(m_in) keeps it width-independent, which is the spectral condition for
hidden layers (Yang, Simon & Bernstein 2023, "A Spectral Condition for Feature
Learning", condition 1: ||dW|| ~ sqrt(fan_out / fan_in) = const).

Attention: q.k / head_dim instead of / sqrt(head_dim), equal to SP at the base
width: scale = 1 / sqrt(head_dim * m) (`ModelConfig.attention_scale`, the one
part of muP that lives in the model, so an exported checkpoint embeds as trained).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from spacenit.arch.model_config import ModelConfig
from spacenit.arch.transformer import TransformerBlock
from spacenit.arch.upsampler import PatchUpsampler
from spacenit.config import ConfigError

#: Modules whose Linear weights SP draws at a width-independent std (transformer.py, upsampler.py: 0.02).
FIXED_STD_MODULES = (TransformerBlock, PatchUpsampler)

#: (target exponent of the init std in m_in) per role; SP's is 0 (fixed std) or -1/2 (PyTorch's default).
_INIT_EXPONENT = {"hidden": -0.5, "output": -1.0}


@dataclass(frozen=True)
class WidthRole:
    """How a parameter scales with the width: its role and m_in = fan_in / base fan_in."""

    role: str  # "input", "hidden", "output", "fixed" (Linear weights) or "vector" (everything else)
    m_in: float = 1.0
    fixed_std: bool = False  # SP draws it at a width-independent std

    def lr_scale(self, muon: bool) -> float:
        if self.role == "hidden":
            return self.m_in**-0.5 if muon else 1.0 / self.m_in
        return 1.0 / self.m_in if self.role == "output" else 1.0

    def init_scale(self) -> float:
        if self.role not in _INIT_EXPONENT:
            return 1.0
        sp_exponent = 0.0 if self.fixed_std else -0.5
        return self.m_in ** (_INIT_EXPONENT[self.role] - sp_exponent)


def base_config(config: ModelConfig, dim: int) -> ModelConfig:
    """`config` at encoder width `dim`, every other width scaled alike, heads kept."""
    ratio = dim / config.dim
    decoder_dim = config.decoder_dim * ratio
    if decoder_dim != int(decoder_dim) or dim % config.heads or int(decoder_dim) % config.decoder_heads:
        raise ConfigError(f"model.mup_base_dim={config.mup_base_dim}: at encoder width {dim} the predictor would be "
                          f"{decoder_dim:g} wide; both must be whole and divide by heads {config.heads} / decoder_heads "
                          f"{config.decoder_heads} (pick a base width that does)")  # fmt: skip
    return replace(config, dim=dim, decoder_dim=int(decoder_dim), mup=False)


def width_roles(module: nn.Module, config: ModelConfig, build: Callable[[ModelConfig], nn.Module]) -> dict[str, WidthRole]:
    """The WidthRole of every parameter of `module` (built from `config` by `build`), by name."""
    base_dim = config.mup_base_dim
    with torch.device("meta"):
        base = dict(build(base_config(config, base_dim)).named_parameters())
        double = dict(build(base_config(config, 2 * base_dim)).named_parameters())
    linear_weights = {f"{name}.weight" if name else "weight": m for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    fixed_std = {id(p) for m in module.modules() if isinstance(m, FIXED_STD_MODULES) for p in m.parameters()}
    roles = {}
    for name, p in module.named_parameters():
        if name not in linear_weights:
            roles[name] = WidthRole("vector")
            continue
        (out_base, in_base), (out_double, in_double) = base[name].shape, double[name].shape
        grows_out, grows_in = out_double != out_base, in_double != in_base
        role = {(True, True): "hidden", (True, False): "input", (False, True): "output"}.get((grows_out, grows_in), "fixed")
        roles[name] = WidthRole(role, p.shape[1] / in_base if grows_in else 1.0, id(p) in fixed_std)
    return roles


@torch.no_grad()
def initialize(module: nn.Module, roles: dict[str, WidthRole]) -> None:
    """Rescale SP's initial weights of `module` to muP's (in place; a no-op at the base width).

    Rescaling, not redrawing: an EMA target encoder copied from the online one stays equal to it.
    """
    for name, p in module.named_parameters():
        scale = roles[name].init_scale()
        if scale != 1.0:
            p.mul_(scale)
