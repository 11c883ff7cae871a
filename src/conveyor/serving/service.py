"""The BentoML service: ``POST /predict`` (or, for an LLM project, the OpenAI API: ``POST
/v1/chat/completions``, ``/v1/completions``, ``GET /v1/models``), ``/admin/*``, ``/docs.json``,
and BentoML's ``/livez``, ``/readyz``, ``/metrics``.

Run it with ``conveyor serve`` (which starts ``bentoml serve conveyor.serving.service:Conveyor``
on 127.0.0.1 with the Workspace's environment), or build its Bento with ``make bento``. The service
opens its Workspace exactly as the command line does (``Workspace.open()``: the ``CONVEYOR_*``
environment, then the project file's ``settings:``, then defaults), so a bare ``bentoml serve``
in the project folder uses the same stores as ``conveyor serve``.

Every request passes ``serving.gate`` first (keys, limits, content types, the paths served),
before any of BentoML's own layers (``serving.transport`` puts it there); ``/predict`` is
answered there by the front end (``serving.tabular`` or ``serving.gateway``) on the serving core
(``serving.core``). BentoML runs ``workers`` processes (the serving
policy); they share the canary's state (``serving.shared``), and each model runs in a child
process of its worker (``serving.models``).
"""

import logging
from typing import Any

from conveyor.registry.workspace import Workspace, prepare_process

prepare_process()  # telemetry off and one BLAS thread per model, before BentoML is imported

import bentoml  # noqa: E402 - must follow prepare_process
from fastapi import FastAPI, HTTPException  # noqa: E402 - as above
from pydantic import BaseModel, Field  # noqa: E402 - as above

from conveyor.policies.errors import RequestRefused  # noqa: E402 - as above
from conveyor.serving import transport  # noqa: E402 - as above
from conveyor.serving.gate import Front  # noqa: E402 - as above

__all__ = [
    "Abort",
    "Conveyor",
    "Weight",
]

log = logging.getLogger("conveyor.serving")
logging.getLogger("conveyor").setLevel(logging.INFO)  # what the service loads, refuses and decides: in its log
_WORKSPACE = Workspace.open()
_POLICY = _WORKSPACE.serving_policy()
front = Front()
transport.install(_POLICY.header_timeout_seconds, front)  # before BentoML's worker builds its uvicorn server


class Weight(BaseModel):
    weight: float = Field(ge=0, le=100, description="percent of requests for the canary")
    hold: bool = Field(False, description="stay at this weight until told otherwise (rollback still applies)")


class Abort(BaseModel):
    reason: str = Field("no reason given", max_length=500)


# The gate has checked the admin key before any of these run. No interactive docs: they load scripts from a CDN.
admin = FastAPI(title="Conveyor admin", docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.service(
    name="conveyor",
    workers=_POLICY.workers,
    traffic={"timeout": 30},
    logging={"access": {"enabled": False}},
)
@bentoml.asgi_app(admin, path="/admin")
class Conveyor:
    def __init__(self) -> None:
        # here, in the worker: BentoML's arbiter imports this module too
        from conveyor.serving.spare import warm_pool

        if _WORKSPACE.is_llm:  # an LLM project: the OpenAI-compatible gateway over its releases
            from conveyor.serving.gateway import Gateway

            self.endpoint: Any = Gateway(_WORKSPACE.prepare())
        else:
            spare = warm_pool()  # first: the model process starts while the core is imported and verifies
            from conveyor.serving.tabular import (
                TabularEndpoint,
            )  # here, in the worker: BentoML's arbiter imports this module too

            self.endpoint = TabularEndpoint(_WORKSPACE.prepare(), spare=spare)
        self.endpoint.start()
        front.endpoint = self.endpoint

    def __is_ready__(self) -> bool:
        return self.endpoint.core.ready

    def __metrics__(self, content: str) -> str:
        return content + self.endpoint.core.metrics.render()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Graceful stop: the models' processes end and every logged request is written."""
        front.endpoint = None
        self.endpoint.close()

    @admin.get("/status")
    def status(self) -> dict[str, Any]:
        """The models served, the canary's weight, step and last verdict."""
        return self.endpoint.status()

    @admin.post("/weight")
    def set_weight(self, body: Weight) -> dict[str, Any]:
        """Move the canary's weight by hand; analysis goes on from the step at or above it."""
        # here, in the worker: BentoML's arbiter imports this module too
        from conveyor.serving import verdicts

        return self._admin_call(verdicts.set_weight, self.endpoint.core, body.weight, body.hold)

    @admin.post("/abort")
    def abort(self, body: Abort) -> dict[str, Any]:
        """Roll the canary back now: weight 0, alias removed, recorded in the ledger."""
        # here, in the worker: BentoML's arbiter imports this module too
        from conveyor.serving import verdicts

        return self._admin_call(verdicts.abort, self.endpoint.core, body.reason)

    @admin.post("/reload")
    def reload(self) -> dict[str, Any]:
        """Check the registry's aliases now instead of at the next watch."""
        self.endpoint.core.sync()
        return self.endpoint.status()

    def _admin_call(self, function: Any, *args: Any) -> dict[str, Any]:
        try:
            function(*args)
            return self.endpoint.status()
        except RequestRefused as exc:
            raise HTTPException(exc.http_status, str(exc)) from None
