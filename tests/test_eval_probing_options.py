"""Probing options of ssl-eval-notes.md: register-token / patch-mean / both pooling, and the in-loop linear probe."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import PartialState

from spacenit.arch.models import SpaceNitModel
from spacenit.cli import main
from spacenit.evaluation.adapters import SpaceNitAdapter
from spacenit.evaluation.cli_verbs import POOLINGS as CLI_POOLINGS
from spacenit.evaluation.datasets import task_from_dataset
from spacenit.evaluation.embed import (
    ModelInputDataset,
    collate_inputs,
    load_embeddings,
    model_inputs_for,
)
from spacenit.evaluation.heads import HeadConfig
from spacenit.evaluation.inloop import KnnProbeCallback
from spacenit.evaluation.linear import linear_probe_scores
from spacenit.evaluation.pooling import POOLINGS, PoolingError, pooled_embeddings
from spacenit.train.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def with_registers(pretrained, tmp_path_factory):
    """The pretrained test model's architecture with 3 register tokens (seeded init), saved as a checkpoint."""
    result, _ = pretrained
    _, meta = load_checkpoint(result.checkpoint_dir)
    torch.manual_seed(0)
    model = SpaceNitModel(replace(meta.model, num_registers=3), meta.sensors).eval()
    meta = replace(meta, model=model.config)
    out = tmp_path_factory.mktemp("registers") / "checkpoint"
    save_checkpoint(out, model, meta)
    return model, meta, out


def _batch(meta, dataset: Path, n: int = 6) -> dict:
    data = ModelInputDataset(dataset, model_inputs_for(meta, dataset))
    return collate_inputs([data[i] for i in range(n)])


def test_pooled_vectors_are_the_token_mean_the_register_mean_or_both(with_registers, synthetic_dataset: Path) -> None:
    model, meta, _ = with_registers
    batch = _batch(meta, synthetic_dataset)
    gsd = 10.0
    mean, _, _ = pooled_embeddings(model, batch["images"], batch["months"], meta.patch_size, gsd_m=gsd, pooling="mean")
    cls, _, _ = pooled_embeddings(model, batch["images"], batch["months"], meta.patch_size, gsd_m=gsd, pooling="cls")
    both, maps, valid = pooled_embeddings(model, batch["images"], batch["months"], meta.patch_size, gsd_m=gsd,
                                          pooling="both", patch_maps=True)  # fmt: skip
    torch.testing.assert_close(mean, model.embed(batch["images"], batch["months"], meta.patch_size, gsd_m=gsd))
    with torch.no_grad():  # the register tokens' outputs, from the encoder directly
        tok = model.encoder.tokenizer(batch["images"], batch["months"], meta.patch_size, gsd)
        registers = model.encoder.encode_with_registers(tok)[3]
    assert registers.shape[1] == 3
    torch.testing.assert_close(cls, registers.mean(dim=1))
    torch.testing.assert_close(both, torch.cat((cls, mean), dim=1))
    assert not torch.allclose(cls, mean) and cls.std(dim=0).min() > 0  # registers read the sample, not a constant
    assert maps.shape[:3] == valid.shape and maps.shape[-1] == mean.shape[1]
    assert POOLINGS == CLI_POOLINGS


def test_register_pooling_needs_registers(pretrained, synthetic_dataset: Path) -> None:
    result, _ = pretrained
    model, meta = load_checkpoint(result.checkpoint_dir)
    assert model.config.num_registers == 0
    with pytest.raises(PoolingError, match="register tokens"):
        SpaceNitAdapter(model, meta, pooling="cls")
    with pytest.raises(PoolingError, match="unknown pooling"):
        SpaceNitAdapter(model, meta, pooling="max")


def test_adapter_and_embed_verb_take_the_pooling(with_registers, synthetic_dataset: Path, tmp_path: Path) -> None:
    model, meta, checkpoint = with_registers
    task = task_from_dataset(synthetic_dataset)
    both = SpaceNitAdapter(model, meta, pooling="both", num_workers=0)
    cls = SpaceNitAdapter(model, meta, pooling="cls", num_workers=0)
    assert both.name.endswith("[both]") and cls.random_twin().pooling == "cls"
    f_both, f_cls = both.features(task).pooled, cls.features(task).pooled
    assert f_both.shape == (len(task.ids), 2 * model.config.dim)
    np.testing.assert_allclose(f_both[:, : model.config.dim], f_cls, rtol=1e-5, atol=1e-6)
    assert main(["embed", str(checkpoint), str(synthetic_dataset), str(tmp_path / "cls.zarr"), "--pooling", "cls", "--workers", "0"]) == 0
    emb = load_embeddings(tmp_path / "cls.zarr")
    np.testing.assert_allclose(emb.vectors, f_cls, rtol=1e-5, atol=1e-6)


def test_inloop_linear_probe_beside_knn(pretrained, synthetic_dataset: Path) -> None:
    result, _ = pretrained
    model, meta = load_checkpoint(result.checkpoint_dir)
    trainer = SimpleNamespace(accelerator=PartialState(), unwrapped=SimpleNamespace(model=model), step=2)
    config = HeadConfig(epochs=5, min_steps=30, lrs=(1e-2,))
    callback = KnnProbeCallback(synthetic_dataset, meta.stats, patch_size=meta.patch_size, every_n_steps=2, log_to="metrics",
                                num_resamples=20, linear=True, linear_config=config)  # fmt: skip
    callback.on_train_start(trainer)
    callback.on_step_end(trainer, 2, {})
    logged = {}
    callback.on_log(trainer, 2, logged)
    assert {"eval/knn_accuracy", "eval/linear_accuracy", "eval/linear_accuracy_ci_low", "eval/linear_accuracy_ci_high"} <= set(logged)
    # the same number from the linear probe on the same features and split, computed here
    task = task_from_dataset(synthetic_dataset)
    batch = _batch(meta, synthetic_dataset, n=len(task.ids))
    x = model.embed(batch["images"], batch["months"], meta.patch_size, gsd_m=10.0).numpy()
    fold = callback._fold
    scores, _ = linear_probe_scores(x[fold.train], task.targets[fold.train], x[fold.test], num_classes=task.num_classes,
                                    seed=0, config=config)  # fmt: skip
    assert logged["eval/linear_accuracy"] == pytest.approx(float((scores.argmax(1) == task.targets[fold.test]).mean()))


def test_inloop_probe_on_register_tokens(with_registers, synthetic_dataset: Path) -> None:
    model, meta, _ = with_registers
    trainer = SimpleNamespace(accelerator=PartialState(), unwrapped=SimpleNamespace(model=model), step=1)
    callback = KnnProbeCallback(synthetic_dataset, meta.stats, patch_size=meta.patch_size, every_n_steps=1, log_to="metrics",
                                num_resamples=20, pooling="cls")  # fmt: skip
    callback.on_train_start(trainer)
    assert 0.0 <= callback.evaluate(trainer, 1)["eval/knn_accuracy"] <= 1.0
    plain = SimpleNamespace(accelerator=PartialState(), unwrapped=SimpleNamespace(model=SpaceNitModel(replace(meta.model, num_registers=0), meta.sensors)), step=1)
    with pytest.raises(PoolingError):
        KnnProbeCallback(synthetic_dataset, meta.stats, patch_size=meta.patch_size, pooling="cls").on_train_start(plain)
