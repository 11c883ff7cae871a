"""One error tree: every refusal, the command line's and the services', is a ConveyorError that
carries an exit code and an HTTP status, and the services render them in their clients' shapes."""

from __future__ import annotations

import json

import pytest

from conveyor.policies import errors
from conveyor.policies.errors import (
    ConveyorError,
    LoadRefused,
    ModelFailed,
    NotFound,
    RequestRefused,
    UnknownKey,
)
from conveyor.serving.openai_api import error_body


def test_every_exception_of_the_tree_is_a_conveyor_error_with_an_exit_code_and_an_http_status() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    assert all(issubclass(c, ConveyorError) for c in classes)
    assert all(isinstance(c.exit_code, int) and 100 <= int(c.http_status) < 600 for c in classes)
    assert NotFound.http_status == 404 and UnknownKey.exit_code == 2 and issubclass(UnknownKey, NotFound)
    assert LoadRefused.http_status == 503 and ModelFailed.http_status == 500


@pytest.mark.parametrize(
    ("refusal", "shape"),
    [
        (RequestRefused(401, "a valid API key is required"), ("authentication_error", None, None)),
        (RequestRefused(429, "over the rate", kind="rate_limit_error"), ("rate_limit_error", None, None)),
        (RequestRefused(400, "n: only 1 is served", param="n"), ("invalid_request_error", "n", None)),
        (RequestRefused(503, "no release could answer", code="unavailable"), ("server_error", None, "unavailable")),
    ],
)
def test_a_refusal_is_rendered_in_openais_error_shape_with_its_own_status(
    refusal: RequestRefused, shape: tuple[str, str | None, str | None]
) -> None:
    error = json.loads(error_body(refusal))["error"]
    assert (error["type"], error["param"], error["code"]) == shape
    assert error["message"] == refusal.message and isinstance(refusal, ConveyorError)


def test_a_model_failure_keeps_its_kind_and_an_unknown_key_says_what_to_do() -> None:
    failed = ModelFailed("no first token within 20.0 s", "timeout")
    assert failed.kind == "timeout" and str(failed) == "no first token within 20.0 s"
    unknown = UnknownKey("mallory")
    assert unknown.name == "mallory" and "api-key list" in str(unknown)
