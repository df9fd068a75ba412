"""The published OpenAPI document holds: schemathesis fuzzes a live server against it (#12).

A real uvicorn server (the real app, the fake engine, API keys on) serves ``/openapi.json``;
schemathesis takes that document and, for every operation, sends the schema's examples, its
coverage cases (boundaries, missing and wrong-typed values) and a fixed number of generated
requests, valid and invalid; then it follows the links of the submit answer through scenarios
of calls on the requests it submitted (status, status stream, result, cancel). The seed is
derandomized: every run sends the same requests. Each answer is checked:

* ``not_a_server_error``: no 5xx (the 499/500/503/504 a finished job may answer with are
  declared, but none of these requests ends that way), except the 504 of a request whose own
  ``X-Fal-Request-Timeout`` ran out (``no_server_error``);
* ``status_code_conformance``: the status code is declared for the operation;
* ``content_type_conformance``: so is the Content-Type;
* ``response_schema_conformance``: the body matches the declared schema (events of the status
  stream included);
* ``response_headers_conformance``: the declared required headers are there
  (``x-fal-request-id`` on every answer, ``Retry-After`` on 429, …);
* ``ignored_auth``: an operation that declares the key scheme refuses requests without a key,
  or with a wrong one.

The storage routes that take no API key get real proofs (:class:`Grants`): a signed multipart
upload URL and an upload token, so that generated requests reach their bodies and parameters
instead of stopping at 401. Requests with methods the document does not declare are left out
(Starlette answers those 405 before any of our code runs).

``MAX_EXAMPLES``, ``SCENARIOS`` and ``STEPS`` bound the requests (about 1500 over 29
operations); the module takes about 30 s of CPU (its wall time grows with the load on the
machine). Every status code the document declares is also produced on purpose, and checked,
in ``test_openapi_answers.py``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.inputs import FetchPolicy
from service.jobs import Outcome
from service.queue.memory import InMemoryJobQueue
from service.settings import Settings
from service.storage.local import LocalArtifactStore
from service.webhooks import WebhookSender
from tests.helpers.services import fake_components, serving

pytestmark = pytest.mark.slow

KEY = "fuzz-openapi-key"
AUTH = {"Authorization": f"Key {KEY}"}
MAX_EXAMPLES = 5  # generated requests per operation, besides its examples and coverage cases
SCENARIOS, STEPS = 6, 5  # request scenarios along the links, and calls in each
#: Upload routes whose proof is a signed URL, or an upload token (``Authorization: Bearer``).
SIGNED = {"upload_complete", "upload_put", "upload_put_part"}
BEARER = {"files_upload", "files_upload_multipart", "files_upload_complete", "files_upload_part"}


@schemathesis.check
def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """``not_a_server_error``, except the declared 504 ``request_timeout`` of a request whose
    own ``X-Fal-Request-Timeout`` ran out before it started (a text-to-image request reaches the
    engine at once: it has no image to fetch and fail on first)."""
    if (
        response.status_code == 504
        and "x-fal-request-timeout" in {name.lower() for name in (case.headers or {})}
        and response.json().get("error_type") == "request_timeout"
    ):
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    ignored_auth,
]


class NoWebhooks(WebhookSender):
    """Remembers the webhooks generated requests ask for instead of sending them anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def send(self, url: str, request_id: str, outcome: Outcome) -> None:
        self.sent.append(url)


def published_document() -> dict[str, Any]:
    """``/openapi.json`` of an app configured like the server below (the document depends on
    the settings, not on the worker: an app without one will do, and builds in no time)."""
    with tempfile.TemporaryDirectory() as root:
        app = create_app(
            Settings(cache_dir=Path(root), api_keys=KEY),
            queue=InMemoryJobQueue(),
            store=LocalArtifactStore(Path(root) / "files"),
        )
        document: dict[str, Any] = app.openapi()
    return document


DOCUMENT = published_document()
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict(
        {
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            "phases": {"coverage": {"unexpected-methods": []}},
        }
    ),
)


@dataclass(frozen=True)
class Grants:
    """Real proofs for the upload routes that take no API key, so that generated requests get
    past the proof to the body and parameters: a signed multipart upload URL (its id and
    token) and an upload token with a begun multipart upload of its own."""

    signed_id: str
    signed_token: str
    bearer: str
    bearer_upload: str

    @classmethod
    def obtain(cls, origin: str) -> Grants:
        signed = httpx.post(f"{origin}/storage/upload/initiate-multipart", json={}, headers=AUTH)
        url = httpx.URL(signed.json()["upload_url"])
        token = httpx.post(f"{origin}/storage/auth/token", headers=AUTH).json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        begun = httpx.post(f"{origin}/files/upload/multipart", headers=bearer).json()
        return cls(url.path.rsplit("/", 1)[-1], url.params["token"], token, begun["uploadId"])

    def call(self, case: schemathesis.Case) -> dict[str, str]:
        """The headers to send ``case`` with, after putting this grant's upload in it."""
        operation = case.operation.definition.raw.get("operationId")
        if operation in SIGNED:
            case.path_parameters = {**(case.path_parameters or {}), "upload_id": self.signed_id}
            case.query = {**(case.query or {}), "token": self.signed_token}
        if operation in BEARER:
            ids = {"upload_id": self.bearer_upload, "multipart_id": self.bearer_upload}
            case.path_parameters = {
                **(case.path_parameters or {}),
                **{name: ids[name] for name in ids if name in (case.path_parameters or {})},
            }
            return {"Authorization": f"Bearer {self.bearer}"}
        return AUTH


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The live server. Image downloads time out fast: the schema's example names a real URL."""
    parts = fake_components(
        tmp_path_factory.mktemp("fuzz"),
        api_keys=KEY,
        webhooks=NoWebhooks(),
        options={"fetch_policy": FetchPolicy(connect_timeout=1.0, read_timeout=2.0)},
    )
    with serving(parts) as origin:
        published = httpx.get(f"{origin}/openapi.json", timeout=10)
        assert published.json() == DOCUMENT  # what is fuzzed is what the server publishes
        yield origin


@pytest.fixture(scope="module")
def grants(origin: str) -> Grants:
    return Grants.obtain(origin)


@schema.parametrize()
def test_the_server_answers_as_its_openapi_says(
    case: schemathesis.Case, origin: str, grants: Grants
) -> None:
    case.call_and_validate(base_url=origin, headers=grants.call(case), checks=CHECKS)


def test_request_scenarios_follow_the_links(origin: str) -> None:
    """Sequences along the submit answer's links: status, stream, result and cancel of the
    requests just submitted (valid or not), so their real bodies are checked too."""

    class Scenarios(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": origin, "headers": AUTH}

        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case,
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            case.validate_response(response, checks=CHECKS, headers=AUTH, transport_kwargs=kwargs)

    Scenarios.run(
        settings=hypothesis.settings(
            max_examples=SCENARIOS,
            stateful_step_count=STEPS,
            derandomize=True,
            database=None,
            deadline=None,
        )
    )
