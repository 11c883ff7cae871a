"""The fair peer: a bare BentoML service with the same model file in its best configuration:
adaptive batching on (``batchable=True``), the same number of workers, one BLAS thread, access
log off. No verification, routing, auth, contracts, logging or metrics of its own.
BENCH_MODEL_DIR names the model, BENCH_WORKERS the worker count."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from typing import Any

import bentoml


@bentoml.service(
    name="bare",
    workers=int(os.environ.get("BENCH_WORKERS", "1")),
    traffic={"timeout": 30},
    logging={"access": {"enabled": False}},
)
class Bare:
    def __init__(self) -> None:
        import mlflow.sklearn

        self.model = mlflow.sklearn.load_model(os.environ["BENCH_MODEL_DIR"])

    @bentoml.api(route="/predict", batchable=True, max_batch_size=512, max_latency_ms=1_000)
    def predict(self, rows: list[dict[str, Any]]) -> list[float]:
        import pandas as pd

        return self.model.predict_proba(pd.DataFrame(rows))[:, 1].tolist()
