"""MLflow "model from code" entry of a registered external encoder (see pyfunc_model.py)."""

import mlflow

from spacenit.evaluation.pyfunc import ExternalEncoderPyfunc

mlflow.models.set_model(ExternalEncoderPyfunc())
