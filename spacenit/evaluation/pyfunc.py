"""MLflow pyfunc flavour of the encoder, so a registered model can be loaded and served."""

from __future__ import annotations

import mlflow


class EncoderPyfunc(mlflow.pyfunc.PythonModel):
    """Serve a registered SpaceNit encoder: a dict of sensor arrays (B, T, C, H, W) in raw units in,
    pooled embeddings (B, D) out; with params {"output": "patch_maps"}, maps (B, h, w, D).

    `pretrain` logs it with an input example and a signature declaring `output`,
    so MLflow passes the parameter through (it drops parameters a signature lacks).
    """

    def load_context(self, context) -> None:
        from spacenit.train.checkpoint import load_checkpoint

        self.model, self.meta = load_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        from spacenit.evaluation.embed import embed_arrays

        patch_maps = (params or {}).get("output") == "patch_maps"
        return embed_arrays(self.model, self.meta, model_input, patch_maps=patch_maps)
