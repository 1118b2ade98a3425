"""The pretraining optimizer: which parameters Muon trains, MuonAdamW against torch's Muon and AdamW run
separately, and a state dict that continues a run exactly (spacenit.train.optim)."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from spacenit.arch.models import SpaceNitModel
from spacenit.sensors import SENTINEL2_L2A
from spacenit.train.optim import MuonAdamW, build_optimizer, muon_parameters, param_groups
from spacenit.train.pretrain import build_config

TINY = ["model.dim=32", "model.heads=2", "model.decoder_dim=32", "model.decoder_heads=2", "model.depth=2",
        "model.decoder_depth=1", "train.lr=1e-2"]  # fmt: skip


def tiny_module(*overrides: str):
    cfg = build_config(overrides=[*TINY, *overrides], preset="small")
    torch.manual_seed(0)
    module = cfg.objective.build(SpaceNitModel(cfg.model, [SENTINEL2_L2A]), cfg.masking.build(), total_steps=10)
    return module, cfg


def batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"images": {"sentinel2_l2a": torch.randn(4, 2, 12, 16, 16, generator=g)},
            "months": {"sentinel2_l2a": torch.randint(1, 13, (4, 2), generator=g)}}  # fmt: skip


class SideBySide:
    """Two optimizers stepped one after the other, as a training loop without MuonAdamW would."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)


def train(module, optimizer, steps: int, start: int = 0) -> None:
    for step in range(start, start + steps):
        out = module(batch(), 8, torch.Generator().manual_seed(step), step)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        module.after_optimizer_step()


def test_muon_takes_the_transformer_blocks_hidden_matrices_and_adamw_everything_else() -> None:
    module, cfg = tiny_module("train.optimizer=muon")
    optimizer = build_optimizer(module, cfg.train)
    by_id = {id(p): name for name, p in module.named_parameters()}
    muon = {by_id[id(p)] for g in optimizer.param_groups if g["use_muon"] for p in g["params"]}
    adamw = {by_id[id(p)] for g in optimizer.param_groups if not g["use_muon"] for p in g["params"]}
    expected = {f"model.{part}.transformer.blocks.{i}.{m}.weight" for part, depth in (("encoder", 2), ("predictor", 1))
                for i in range(depth) for m in ("attn.qkv", "attn.proj", "ffn.gate_up", "ffn.down")}  # fmt: skip
    assert muon == expected
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert muon | adamw == trainable and not muon & adamw
    for name in ("model.encoder.tokenizer.group_embed", "model.encoder.tokenizer.month_embed.proj.weight",
                 "model.encoder.tokenizer.patch_embed.sentinel2_l2a__10m.weight", "model.predictor.input_proj.weight",
                 "model.predictor.output_proj.weight", "model.predictor.mask_token", "projection.fc2.weight",
                 "model.encoder.transformer.blocks.0.attn_norm.weight", "logit_scale"):  # fmt: skip
        assert name in adamw, name
    assert not any(n.startswith("target_encoder") for n in muon | adamw)  # the EMA target is not trained
    assert len(muon_parameters(module.target_encoder)) == 4 * 2  # ... though its blocks have matrices


def test_muon_adamw_steps_like_torch_muon_and_adamw_side_by_side() -> None:
    """The one-optimizer wrapper against the two torch optimizers of its docstring, each on its own groups."""
    module, cfg = tiny_module("train.optimizer=muon", "train.weight_decay=0.1")
    twin = copy.deepcopy(module)
    ours = build_optimizer(module, cfg.train)
    groups = param_groups(twin, cfg.train.weight_decay, muon=True)
    muon = torch.optim.Muon([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups if g["use_muon"]],
                            lr=cfg.train.lr, momentum=0.95, adjust_lr_fn="match_rms_adamw")  # fmt: skip
    adamw = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups if not g["use_muon"]],
                              lr=cfg.train.lr, betas=(0.9, 0.95))  # fmt: skip
    both = SideBySide(muon, adamw)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    train(module, ours, 3)
    train(twin, both, 3)
    for (name, a), b in zip(module.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    moved = [k for k, v in module.state_dict().items() if "transformer.blocks" in k and not torch.equal(v, before[k])]
    assert moved, "the Muon matrices did not move"


def test_adamw_alone_is_torch_adamw() -> None:
    module, cfg = tiny_module()
    twin = copy.deepcopy(module)
    ours = build_optimizer(module, cfg.train)
    assert not any(g["use_muon"] for g in ours.param_groups)
    reference = torch.optim.AdamW(param_groups(twin, cfg.train.weight_decay), lr=cfg.train.lr, betas=(0.9, 0.95))
    train(module, ours, 3)
    train(twin, reference, 3)
    for (name, a), b in zip(module.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_state_dict_round_trip_continues_the_run_exactly(optimizer: str) -> None:
    module, cfg = tiny_module(f"train.optimizer={optimizer}")
    straight = build_optimizer(module, cfg.train)
    train(module, straight, 2)
    saved_module = copy.deepcopy(module.state_dict())
    buffer = io.BytesIO()
    torch.save(straight.state_dict(), buffer)
    train(module, straight, 2, start=2)

    resumed, _ = tiny_module(f"train.optimizer={optimizer}")
    resumed.load_state_dict(saved_module)
    optim = build_optimizer(resumed, cfg.train)
    buffer.seek(0)
    optim.load_state_dict(torch.load(buffer, weights_only=True))
    kinds = {type(inner).__name__ for inner in optim._inner}
    assert kinds == ({"Muon", "AdamW"} if optimizer == "muon" else {"AdamW"})
    assert all(inner.state is optim.state for inner in optim._inner)  # the loaded momentum is what steps use
    train(resumed, optim, 2, start=2)
    for (name, a), b in zip(module.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_groups_carry_their_learning_rate_scale() -> None:
    module, cfg = tiny_module("train.optimizer=muon")
    optimizer = build_optimizer(module, cfg.train, lambda name, use_muon: 0.5 if use_muon else 1.0)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(cfg.train.lr * group["lr_scale"])
        assert group["lr_scale"] == (0.5 if group["use_muon"] else 1.0)
    with pytest.raises(ValueError, match="train.optimizer"):
        build_optimizer(module, build_config(overrides=["train.optimizer=sgd"]).train)
    assert isinstance(optimizer, MuonAdamW)
