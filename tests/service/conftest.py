"""Fixtures for the in-process HTTP tests: the app, the fake engine and an embedded worker."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from service_helpers import EngineGate, MakeService, Service
from starlette.testclient import TestClient

from pipelines.protocol import EditEngine
from service.bootstrap import build_app
from service.inputs import FetchPolicy
from service.queue.memory import InMemoryJobQueue
from service.webhooks import WebhookSender
from tests.helpers.services import fake_components


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[MakeService]:
    """Build and start services; each is shut down (gate opened first) at teardown.

    Options: ``num_steps``/``step_seconds`` of the fake engine; ``gated`` (the engine factory
    blocks until ``service.gate.open()``); ``engine_factory`` (replaces the gate); queue limits
    ``max_queued``/``result_ttl``; worker ``max_batch_images``/``fetch_policy``; ``webhooks``;
    ``settings`` (extra ``Settings`` fields).
    """
    stack = ExitStack()
    counter = itertools.count()

    def make(
        *,
        num_steps: int = 4,
        step_seconds: float = 0.0,
        gated: bool = False,
        engine_factory: Callable[[], EditEngine] | None = None,
        max_queued: int = 1000,
        result_ttl: float = 3600.0,
        max_batch_images: int = 4,
        batch_window: float = 0.01,
        fetch_policy: FetchPolicy | None = None,
        webhooks: WebhookSender | None = None,
        settings: dict[str, Any] | None = None,
    ) -> Service:
        root = tmp_path / f"service{next(counter)}"
        queue = InMemoryJobQueue(max_queued=max_queued, result_ttl=result_ttl)
        gate = None
        if engine_factory is None:
            gate = EngineGate(closed=gated, num_steps=num_steps, step_seconds=step_seconds)
            engine_factory = gate
        parts = fake_components(
            root,
            engine=engine_factory,
            queue=queue,
            options={
                "max_batch_images": max_batch_images,
                "batch_window": batch_window,
                "fetch_policy": fetch_policy or FetchPolicy(),
            },
            **({"webhooks": webhooks} if webhooks is not None else {}),
            **(settings or {}),
        )
        client = stack.enter_context(TestClient(build_app(parts)))
        if gate is not None:
            stack.callback(gate.open)  # runs before the client's shutdown (LIFO)
        assert parts.worker is not None
        return Service(
            client=client,
            queue=queue,
            store=parts.store,  # type: ignore[arg-type]
            worker=parts.worker,
            files=parts.settings.storage.files_root,
            gate=gate,
        )

    with stack:
        yield make


@pytest.fixture
def service(make_service: MakeService) -> Service:
    """A service with an instant fake engine (4 steps)."""
    return make_service()
