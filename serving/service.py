"""The BentoML service: ``POST /predict``, ``/admin/*``, and BentoML's ``/livez``, ``/readyz``, ``/metrics``.

Run it with ``conveyor serve`` (which starts ``bentoml serve serving.service:Conveyor`` on
127.0.0.1 with the Workspace's environment), or build it with ``bentoml build``. The service
opens its Workspace exactly as the command line does (``Workspace.open()``: the ``CONVEYOR_*``
environment, then the project file's ``settings:``, then defaults), so a bare ``bentoml serve``
in the project folder uses the same stores as ``conveyor serve``.

One worker: the router, the canary analysis and the inference log are the state of one process,
and the canary's model runs in a child process of its own (see ``serving.models``).
"""

import logging
from typing import Annotated, Any

from registry.workspace import Workspace, prepare_process

prepare_process()  # telemetry off and one BLAS thread per model, before BentoML is imported

import bentoml  # noqa: E402 - must follow prepare_process
from fastapi import FastAPI, Header, HTTPException  # noqa: E402 - as above
from pydantic import BaseModel, Field  # noqa: E402 - as above

from serving.engine import ClientError, Engine  # noqa: E402 - as above

__all__ = ["Conveyor"]

log = logging.getLogger("conveyor.serving")


class Weight(BaseModel):
    weight: float = Field(ge=0, le=100, description="percent of requests for the canary")
    hold: bool = Field(False, description="stay at this weight until told otherwise (rollback still applies)")


class Abort(BaseModel):
    reason: str = Field("no reason given", max_length=500)


admin = FastAPI(title="Conveyor admin", description="Canary status and control: admin API keys only.")


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
        self.engine = Engine(Workspace.open().prepare())
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
        self,
        rows: Annotated[list[dict[str, Any]], Field(description="rows of feature values, one object per row")],
        key: Annotated[
            str | None, Field(description="a routing key: requests with the same key go to the same model")
        ] = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> dict[str, Any]:
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
    def status(
        self, authorization: Annotated[str | None, Header()] = None, x_api_key: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """The models served, the canary's weight, step and last verdict."""
        self._admin(authorization, x_api_key)
        return self.engine.status()

    @admin.post("/weight")
    def set_weight(
        self,
        body: Weight,
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Move the canary's weight by hand; analysis goes on from the step at or above it."""
        self._admin(authorization, x_api_key)
        return self._engine_call(self.engine.set_weight, body.weight, body.hold)

    @admin.post("/abort")
    def abort(
        self,
        body: Abort,
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Roll the canary back now: weight 0, alias removed, recorded in the ledger."""
        self._admin(authorization, x_api_key)
        return self._engine_call(self.engine.abort, body.reason)

    @admin.post("/reload")
    def reload(
        self, authorization: Annotated[str | None, Header()] = None, x_api_key: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Check the registry's aliases now instead of at the next watch."""
        self._admin(authorization, x_api_key)
        return self.engine.sync()

    def _engine_call(self, function: Any, *args: Any) -> dict[str, Any]:
        try:
            return function(*args)
        except ClientError as exc:
            raise HTTPException(exc.status, str(exc)) from None
