"""The baseline: a bare BentoML service answering with the same model file, nothing else
(no verification, routing, auth, logging or metrics of its own). BENCH_MODEL_DIR names the model."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from typing import Any

import bentoml


@bentoml.service(name="bare", workers=1, traffic={"timeout": 30}, logging={"access": {"enabled": False}})
class Bare:
    def __init__(self) -> None:
        import mlflow.sklearn

        self.model = mlflow.sklearn.load_model(os.environ["BENCH_MODEL_DIR"])

    @bentoml.api(route="/predict")
    def predict(self, rows: list[dict[str, Any]], key: str | None = None) -> dict[str, Any]:
        import pandas as pd

        return {"predictions": self.model.predict_proba(pd.DataFrame(rows))[:, 1].tolist()}
