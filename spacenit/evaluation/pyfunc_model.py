"""MLflow "model from code" entry: logging points MLflow at this file instead of pickling an object."""

import mlflow

from spacenit.evaluation.pyfunc import EncoderPyfunc

mlflow.models.set_model(EncoderPyfunc())
