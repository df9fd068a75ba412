"""The service in this process, wired by the real bootstrap around a fake engine and checker.

For tests that need the whole app (routes, queue, worker, store) but not the model: the instant
:class:`~pipelines.fake.FakeEngine` and the never-flagging checker stand in for FLUX.2 and
opennsfw; everything else is what ``flux2-edit serve`` builds.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import free_port
from pipelines.fake import FakeEngine
from pipelines.protocol import EditEngine
from pipelines.safety import NeverFlagChecker, SafetyChecker
from service.bootstrap import Components, Role, build, build_app
from service.settings import Settings
from service.tls import LocalCertificates

#: Worker options that keep tests quick: no warm-up, short claims, a 10 ms batch window.
FAST_WORKER: dict[str, Any] = {"warmup": False, "claim_timeout": 0.05, "batch_window": 0.01}


def fake_components(
    root: Path,
    *,
    engine: Callable[[], EditEngine] = FakeEngine,
    safety: Callable[[], SafetyChecker] = NeverFlagChecker,
    options: Mapping[str, Any] | None = None,
    role: Role = Role.SERVE,
    **parts_and_settings: Any,
) -> Components:
    """``build()`` for a ``role`` process under ``root``, on ``engine``.

    Keyword arguments are ``queue``, ``store``, ``webhooks``, ``metrics`` (given to ``build``)
    or settings fields (``api_keys=...``); ``options`` changes :data:`FAST_WORKER`.
    """
    parts = {
        name: parts_and_settings.pop(name)
        for name in ("queue", "store", "webhooks", "metrics")
        if name in parts_and_settings
    }
    settings = Settings(cache_dir=root / "cache", files_dir=root / "files", **parts_and_settings)
    return build(
        settings,
        role,
        engine=engine,
        safety=safety,
        options={**FAST_WORKER, **(options or {})},
        **parts,
    )


@contextmanager
def serving(
    components: Components, *, timeout: float = 30.0, tls: LocalCertificates | None = None
) -> Iterator[str]:
    """Serve ``components``' app with uvicorn on a free loopback port, in a thread, until the
    block ends; yields its origin once ``/ready`` answers 200 (https with ``tls``)."""
    import uvicorn

    port = free_port()
    certificates: dict[str, Any] = (
        {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)} if tls else {}
    )
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(components),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            **certificates,
        )
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    origin = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(tls.ca)) if tls else True
    try:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5, verify=verify) as client:
            while True:
                try:
                    if server.started and client.get(f"{origin}/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the in-process server on {origin} did not start")
                time.sleep(0.05)
        yield origin
    finally:
        server.should_exit = True
        thread.join(timeout=20)
