"""MLflow pyfunc flavour of the encoder, so a registered model can be loaded and served."""

from __future__ import annotations

import mlflow


class EncoderPyfunc(mlflow.pyfunc.PythonModel):
    """Serve a registered SpaceNit encoder: raw sensor arrays in, pooled embeddings (B, D) out;
    with params {"output": "patch_maps"}, maps (B, h, w, D).

    Inputs (`spacenit.evaluation.embed.model_arrays`), any subset of the model's sensors, any
    tile size, any number of dates, any numeric dtype:
      "<sensor>": (B, T, C, H, W), every band on a grid of the training data's pixel size;
      "<sensor>/<grid>": one grid at its own resolution, e.g. "sentinel2_l2a/20m";
      "<sensor>/months": (B, T), 1-12 (0 = unknown).
    `pretrain` logs it with an input example and a signature declaring `output` (MLflow drops
    parameters a signature lacks) but no input schema; bad inputs are a 400 naming the input.
    """

    def load_context(self, context) -> None:
        from spacenit.train.checkpoint import load_checkpoint

        self.model, self.meta = load_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from spacenit.evaluation.embed import EmbedError, embed_arrays
        from spacenit.evaluation.inputs import InputBindingError

        patch_maps = (params or {}).get("output") == "patch_maps"
        if not isinstance(model_input, dict):
            raise MlflowException("send a JSON object of named arrays: {\"inputs\": {\"<sensor>\": [...], ...}}",
                                  error_code=INVALID_PARAMETER_VALUE)  # fmt: skip
        try:
            return embed_arrays(self.model, self.meta, model_input, patch_maps=patch_maps)
        except (EmbedError, InputBindingError, ValueError) as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None


class ExternalEncoderPyfunc(mlflow.pyfunc.PythonModel):
    """Serve a published external encoder (Galileo nano, Presto) registered with `spacenit register`:
    raw sensor arrays in, pooled embeddings (B, D) out; with params {"output": "patch_maps"}, maps
    (B, h, w, D) (NaN where the model saw no data).

    Inputs, as `ExternalEncoder.encode` takes them: "<sensor>": (B, T, C, H, W) raw values in the
    sensor's registry band order, every spatial sensor on one grid of `gsd_m` metres (a parameter,
    default 10); "<sensor>/months": (B, T), 1-12 (0 = unknown); optional "latlon": (B, H, W, 2) degrees.
    """

    def load_context(self, context) -> None:
        import json
        from pathlib import Path

        from spacenit.external import load_external

        marker = Path(context.artifacts["external"])
        self.encoder = load_external(json.loads(marker.read_text())["name"], context.artifacts["weights"])

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from spacenit.external import ExternalInputError

        params = params or {}
        if not isinstance(model_input, dict):
            raise MlflowException("send a JSON object of named arrays: {\"inputs\": {\"<sensor>\": [...], ...}}",
                                  error_code=INVALID_PARAMETER_VALUE)  # fmt: skip
        images = {k: v for k, v in model_input.items() if "/" not in k and k != "latlon"}
        months = {k.split("/")[0]: v for k, v in model_input.items() if k.endswith("/months")}
        try:
            out = self.encoder.encode(images, months, float(params.get("gsd_m", 10.0)), latlon=model_input.get("latlon"))
        except (ExternalInputError, KeyError, ValueError) as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        return out.patches if params.get("output") == "patch_maps" else out.pooled
