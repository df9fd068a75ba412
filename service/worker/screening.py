"""The safety checker as the worker uses it: loaded once, one check at a time, per-job policy."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from PIL import Image

from pipelines.safety import SafetyChecker, SafetyVerdict
from service.endpoints import EndpointInput


class SafetyGate:
    """Which jobs are checked, and the checks themselves.

    Args:
        factory: makes the checker; None checks nothing. ``load()`` fails closed: a checker that
            cannot load raises, and the worker reports ``setup_failed``.
        check_inputs: check the reference images too (a flagged reference gives black, flagged
            outputs without running the model).
        allow_disable: honour ``enable_safety_checker=false`` from requests.
    """

    def __init__(
        self,
        factory: Callable[[], SafetyChecker] | None,
        *,
        check_inputs: bool = True,
        allow_disable: bool = False,
    ) -> None:
        self.factory = factory
        self.check_inputs = check_inputs
        self.allow_disable = allow_disable
        self.checker: SafetyChecker | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        if self.factory is not None:
            checker = self.factory()
            checker.load()
            self.checker = checker

    def applies(self, fal_input: EndpointInput) -> bool:
        """Whether this job's images go through the checker."""
        if self.checker is None:
            return False
        return fal_input.enable_safety_checker or not self.allow_disable

    def check(self, images: Sequence[Image.Image]) -> list[SafetyVerdict]:
        assert self.checker is not None, "check() before load()"
        with self._lock:  # one check at a time: the checker is capped to one thread
            return self.checker.check(list(images))
