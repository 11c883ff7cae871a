"""The BentoML service: ``POST /predict``, ``/admin/*``, and BentoML's ``/livez``, ``/readyz``, ``/metrics``.

Run it with ``conveyor serve`` (which resolves the project's settings and starts
``bentoml serve serving.service:Conveyor`` on 127.0.0.1), or build it with ``bentoml build``.
The project comes from the environment: ``CONVEYOR_PROJECT_FILE``, ``CONVEYOR_HOME``,
``CONVEYOR_LEDGER_URL`` and ``CONVEYOR_MLFLOW_TRACKING_URI`` (``conveyor serve`` sets all four).

One worker: the router, the canary analysis and the inference log are the state of one process,
and the canary's model runs in a child process of its own (see ``serving.models``).
"""

import logging
import os
from pathlib import Path
from typing import Annotated, Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one BLAS thread per model: 1.6-1.8x throughput on 2 cores
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

import bentoml  # noqa: E402
from fastapi import FastAPI, Header, HTTPException  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from serving.engine import ClientError, Engine, ServingContext  # noqa: E402

__all__ = ["Conveyor", "serving_context"]

log = logging.getLogger("conveyor.serving")

class Weight(BaseModel):
    weight: float = Field(ge=0, le=100, description="percent of requests for the canary")
    hold: bool = Field(False, description="stay at this weight until told otherwise (rollback still applies)")


class Abort(BaseModel):
    reason: str = Field("no reason given", max_length=500)


admin = FastAPI(title="Conveyor admin", description="Canary status and control: admin API keys only.")


def serving_context() -> ServingContext:
    """The project named by the environment, its policies, ledger and registry."""
    import mlflow

    from policies.canary import CanaryPolicy
    from policies.loading import load_policy
    from policies.project import load_project
    from policies.serving import ServingPolicy
    from policies.signing import load_signing_policy
    from registry.ledger import Ledger
    from registry.release import ReleaseContext

    project_file = Path(os.environ.get("CONVEYOR_PROJECT_FILE", "conveyor.yaml")).absolute()
    root = project_file.parent
    home = Path(os.environ.get("CONVEYOR_HOME", root / ".conveyor"))
    tracking_uri = os.environ.get("CONVEYOR_MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    ledger = Ledger(os.environ.get("CONVEYOR_LEDGER_URL", f"sqlite:///{home / 'ledger.db'}"), actor=os.environ.get("CONVEYOR_ACTOR", "conveyor-serve"))
    mlflow.set_tracking_uri(tracking_uri)
    policies = root / "policies"
    release = ReleaseContext(root, home, load_project(project_file, check_data=False), ledger, policies)
    return ServingContext(release, load_signing_policy(root), load_policy(policies / "canary.yaml", CanaryPolicy),
                          load_policy(policies / "serving.yaml", ServingPolicy), tracking_uri)  # fmt: skip


def _token(authorization: str | None, api_key: str | None) -> str | None:
    if api_key:
        return api_key
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


@bentoml.service(name="conveyor", workers=1, traffic={"timeout": 30}, logging={"access": {"enabled": False}})
@bentoml.asgi_app(admin, path="/admin")
class Conveyor:
    def __init__(self) -> None:
        self.engine = Engine(serving_context())
        self.engine.start()

    def __is_ready__(self) -> bool:
        return self.engine.ready

    def __metrics__(self, content: str) -> str:
        return content + self.engine.metrics.render()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Graceful stop: the canary's process ends and every logged request is written."""
        self.engine.close()

    @bentoml.api(route="/predict")
    async def predict(
        self, rows: Annotated[list[dict[str, Any]], Field(description="rows of feature values, one object per row")],
        key: Annotated[str | None, Field(description="a routing key: requests with the same key go to the same model")] = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> dict[str, Any]:  # fmt: skip
        """Predictions for ``rows``, with the model version that answered."""
        headers = ctx.request.headers
        try:
            self.engine.authorize(_token(headers.get("authorization"), headers.get("x-api-key")))
            return await self.engine.predict(rows, key)
        except ClientError as exc:
            ctx.response.status_code = exc.status
            return {"error": str(exc)}

    # -- admin ----------------------------------------------------------------------------------

    def _admin(self, authorization: str | None, api_key: str | None) -> None:
        try:
            self.engine.authorize(_token(authorization, api_key), admin=True)
        except ClientError as exc:
            raise HTTPException(exc.status, str(exc)) from None

    @admin.get("/status")
    def status(self, authorization: Annotated[str | None, Header()] = None,
               x_api_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:  # fmt: skip
        """The models served, the canary's weight, step and last verdict."""
        self._admin(authorization, x_api_key)
        return self.engine.status()

    @admin.post("/weight")
    def set_weight(self, body: Weight, authorization: Annotated[str | None, Header()] = None,
                   x_api_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:  # fmt: skip
        """Move the canary's weight by hand; analysis goes on from the step at or above it."""
        self._admin(authorization, x_api_key)
        return self._engine_call(self.engine.set_weight, body.weight, body.hold)

    @admin.post("/abort")
    def abort(self, body: Abort, authorization: Annotated[str | None, Header()] = None,
              x_api_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:  # fmt: skip
        """Roll the canary back now: weight 0, alias removed, recorded in the ledger."""
        self._admin(authorization, x_api_key)
        return self._engine_call(self.engine.abort, body.reason)

    @admin.post("/reload")
    def reload(self, authorization: Annotated[str | None, Header()] = None,
               x_api_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:  # fmt: skip
        """Check the registry's aliases now instead of at the next watch."""
        self._admin(authorization, x_api_key)
        return self.engine.sync()

    def _engine_call(self, function: Any, *args: Any) -> dict[str, Any]:
        try:
            return function(*args)
        except ClientError as exc:
            raise HTTPException(exc.status, str(exc)) from None
