"""The pretraining optimizer: AdamW, or Muon for the transformer blocks' hidden matrices and AdamW for the rest.

    optimizer = build_optimizer(module, config.train, mup_roles)   # train.optimizer = "adamw" | "muon"

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural
networks"; `torch.optim.Muon`) replaces each 2-D update by an approximately
orthogonal matrix (Newton-Schulz iterations on the Nesterov momentum). It is
meant for hidden weight matrices only: here the 2-D weights of every
`TransformerBlock` (attention qkv and output projection, SwiGLU matrices) of
the encoder and the predictor. Embeddings (patch, group, month, registers,
mask tokens), norms, biases, heads, the predictor's input and output
projections and every 1-D parameter stay with AdamW, as the Muon authors
recommend (ssl-eval-notes.md, 12/21: AdamW vs Muon). Muon's step is scaled
per matrix by `0.2 * sqrt(max(fan_out, fan_in))` ("match_rms_adamw", Liu et
al. 2025, "Muon is Scalable for LLM Training", section 2.2), which gives its
update the RMS of an AdamW update: one `train.lr` and `train.weight_decay`
serve both kinds of groups.

`MuonAdamW` is one `torch.optim.Optimizer` over both kinds of groups, so the
LR scheduler, accelerate, the training checkpoint (one state dict) and FSDP2's
sharded optimizer state see a single optimizer. Under FSDP2 the parameters,
gradients and momentum buffers are DTensors sharded on their first dimension;
Newton-Schulz then runs on DTensors, whose matmuls gather what they need, so
every rank computes the whole orthogonalized update of each matrix (the
memory of one full matrix at a time, the compute of an unsharded step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from spacenit.arch.transformer import TransformerBlock

OPTIMIZERS = ("adamw", "muon")


def muon_parameters(module: nn.Module) -> set[int]:
    """ids of the hidden matrices Muon trains: the 2-D weights inside every TransformerBlock."""
    return {id(p) for block in module.modules() if isinstance(block, TransformerBlock) for p in block.parameters() if p.ndim == 2}


def param_groups(module: nn.Module, weight_decay: float, *, muon: bool = False,
                 lr_scale: Callable[[str, bool], float] | None = None) -> list[dict]:  # fmt: skip
    """Parameter groups by (optimizer, weight decay, learning-rate scale).

    No weight decay on norms, biases and embeddings (1-D parameters, tables). With
    `muon`, the transformer blocks' 2-D weights get `use_muon=True`. `lr_scale(name,
    use_muon)` (muP) multiplies a parameter's learning rate; groups carry it as `lr_scale`.
    """
    hidden = muon_parameters(module) if muon else set()
    groups: dict[tuple[bool, float, float], list[torch.Tensor]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        no_decay = p.ndim < 2 or "embed" in leaf or leaf in ("mask_token", "queries", "registers")
        use_muon = id(p) in hidden
        scale = lr_scale(name, use_muon) if lr_scale else 1.0
        groups.setdefault((use_muon, 0.0 if no_decay else weight_decay, scale), []).append(p)
    return [{"params": params, "use_muon": use_muon, "weight_decay": wd, "lr_scale": scale}
            for (use_muon, wd, scale), params in groups.items()]  # fmt: skip


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on the groups with `use_muon`, torch.optim.AdamW on the others, as one optimizer.

    The two inner optimizers share this optimizer's group dicts and its `state`, so
    `state_dict()` / `load_state_dict()` of the base class cover both; loading replaces
    the group dicts and the state, after which the inner optimizers are rebuilt over them.
    A group's `lr` is `lr * lr_scale`.
    """

    def __init__(self, groups: list[dict], *, lr: float, betas: tuple[float, float] = (0.9, 0.95),
                 muon_momentum: float = 0.95) -> None:  # fmt: skip
        for group in groups:
            group.setdefault("lr", lr * group.get("lr_scale", 1.0))
        super().__init__(groups, {"lr": lr, "weight_decay": 0.0, "use_muon": False, "lr_scale": 1.0})
        self.betas, self.muon_momentum = tuple(betas), muon_momentum
        self._link()

    def _link(self) -> None:
        muon = [g for g in self.param_groups if g["use_muon"]]
        adamw = [g for g in self.param_groups if not g["use_muon"]]
        self._inner: list[torch.optim.Optimizer] = []
        if muon:
            self._inner.append(torch.optim.Muon(muon, momentum=self.muon_momentum, adjust_lr_fn="match_rms_adamw"))
        if adamw:
            self._inner.append(torch.optim.AdamW(adamw, betas=self.betas))
        for inner in self._inner:
            inner.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for inner in self._inner:
            inner.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()


def build_optimizer(module: nn.Module, train_config, lr_scale: Callable[[str, bool], float] | None = None) -> MuonAdamW:
    """The optimizer `train_config.optimizer` names over `module`'s trainable parameters
    (AdamW alone is MuonAdamW without Muon groups: the same update as torch.optim.AdamW)."""
    tc = train_config
    if tc.optimizer not in OPTIMIZERS:
        raise ValueError(f"train.optimizer must be one of {OPTIMIZERS}, got {tc.optimizer!r}")
    groups = param_groups(module, tc.weight_decay, muon=tc.optimizer == "muon", lr_scale=lr_scale)
    return MuonAdamW(groups, lr=tc.lr, betas=tuple(tc.betas), muon_momentum=tc.muon_momentum)
