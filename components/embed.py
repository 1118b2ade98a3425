"""KFP component of the `embed` stage: checkpoint + dataset -> embeddings (a Zarr group)."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def embed(
    model: Input[Model],
    dataset: Input[Dataset],
    embeddings: Output[Dataset],
    batch_size: int = 32,
):
    """Write pooled per-sample embeddings of `dataset` to the Zarr group `embeddings.path`."""
    from spacenit.evaluation.embed import embed as run_embed

    print(
        f"wrote {run_embed(model.path, dataset.path, embeddings.path, batch_size=batch_size, progress=False)}"
    )
    embeddings.metadata["model_uri"] = model.metadata.get("model_uri", "")


embed_op = embed
