"""One request over several GPUs: a group of rank processes behind the ``EditEngine`` seam.

:class:`ParallelEngine` is what the worker sees: ``load()``, ``warmup()``, ``run()`` like any
engine, so the worker's stages (scheduler, preparation, GPU loop, finishing) do not change. It
is a driver, not a rank: it starts one process per rank (:mod:`pipelines.ranks`, ``spawn``), hosts
the TCP store where they meet, and relays each batch::

    worker ─ run(batch) ─▶ ParallelEngine ─("run")──▶ rank 0 ─┐ prepare, broadcast, decode
                                          ─("follow")▶ rank 1 ─┤ denoise together
                                          ─("follow")▶ rank N ─┘ (diffusers' Ulysses or TP)
           on_step ◀──("step")── rank 0     should_cancel ◀──("ask")── rank 0, before each step

Keeping the driver out of the group keeps the worker process out of every collective: it never
hangs in one, it notices a dead rank at once (it waits on the ranks' pipes and process
sentinels together), and a rank's CUDA or NCCL failure cannot take the worker down with it.

**Failure.** A rank that dies, or reports that the group failed while denoising, brings the
whole group down: the driver logs why, ends the other ranks and raises
:class:`~core.errors.WorkerDead` from ``run()`` (and from every later call). The worker then goes
``defunct``; ``flux2-edit worker`` exits non-zero for its process manager to restart it, and the
jobs of the batch go back to the queue when their Redis lease lapses (or fail at once in
``serve``). Errors before the denoising (a reference that cannot be used, out of memory in the
text encoder) and in the decode only fail the batch, as in the one-process engine.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import time
import weakref
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch
from torch.distributed import TCPStore  # type: ignore[attr-defined]

from core.errors import ConfigError, Flux2Error, GenerationFailed, InvalidRequest, WorkerDead
from pipelines import ranks
from pipelines.flux2 import Flux2EngineConfig, warmup_requests
from pipelines.layout import ParallelLayout
from pipelines.prompt_cache import CacheStats
from pipelines.regimes import (
    TurboMode,
    check_regime,
    require_turbo_lora,
    turbo_lora_path,
    turbo_mode,
)
from pipelines.types import CancelCheck, EditRequest, EditResult, LoraWeights, StepCallback

logger = logging.getLogger(__name__)

#: How long a collective waits for the other ranks before it raises (a rank that hangs without
#: dying). Generous: rank 0 may spend tens of seconds in a CPU text encoder while the others wait.
COLLECTIVE_TIMEOUT_S = 300.0
CLOSE_TIMEOUT_S = 30.0


@dataclass
class _Rank:
    index: int
    process: BaseProcess
    conn: Connection


class ParallelEngine:
    """FLUX.2 on a group of ranks (see the module docstring); an :class:`EditEngine`.

    Args:
        config: the engine configuration every rank loads (``device`` ``auto``, ``cuda`` or
            ``cpu``; a ``cuda:N`` device is refused: name the GPUs with ``gpus``).
        layout: ``ulysses:N`` or ``tp:N``.
        gpus: one GPU index per rank (default ``0..N-1``); ignored on the CPU.
        collective_timeout_s: see :data:`COLLECTIVE_TIMEOUT_S`.
        profile: time the collectives inside the transformer (for benchmarks; slower).
    """

    def __init__(
        self,
        config: Flux2EngineConfig,
        layout: ParallelLayout,
        *,
        gpus: Sequence[int] | None = None,
        collective_timeout_s: float = COLLECTIVE_TIMEOUT_S,
        profile: bool = False,
    ) -> None:
        self.config = config
        self.layout = layout
        self.gpus = tuple(gpus) if gpus is not None else None
        self.collective_timeout_s = collective_timeout_s
        self.profile = profile
        self.reports: list[dict[str, Any]] = []
        self.dead: str | None = None
        self._ranks: list[_Rank] = []
        self._store: Any = None
        self._cache_stats: CacheStats | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def num_steps(self) -> int:
        return self.config.schedule.num_inference_steps

    def prompt_cache_stats(self) -> CacheStats | None:
        """Rank 0's prompt cache, as of the last batch."""
        return self._cache_stats

    def adapter_cache_stats(self) -> CacheStats | None:
        """None: a group runs no request LoRAs (see :meth:`check_lora`)."""
        return None

    def check_lora(self, lora: LoraWeights) -> None:
        """Request LoRAs are refused on a group: every rank would have to load each adapter
        into its share of the transformer (tensor parallelism splits the very layers a LoRA
        targets); one-process engines serve them.

        Raises:
            InvalidRequest: always.
        """
        raise InvalidRequest(
            f"LoRAs are not served by this server (one request runs on {self.layout.degree} "
            f"GPUs, parallel={self.layout}); send them to a server without FLUX2_PARALLEL",
            type="value_error",
            input=str(lora.path),
        )

    @property
    def pids(self) -> list[int]:
        """The rank processes, rank 0 first."""
        return [rank.process.pid or 0 for rank in self._ranks]

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        """Start the ranks and wait until every one has loaded its share of the model.

        Raises:
            ConfigError: a setting cannot work here (too few GPUs, a ``cuda:N`` device, or what
                a rank refused: fp8 with tensor parallelism, an attention backend without
                context parallelism, ...).
            WeightsError: a rank could not read the checkpoint.
            WorkerDead: a rank died while loading.
        """
        self.config = self._with_turbo_lora(self.config)
        visible = self._visible_gpus()
        started = time.perf_counter()
        self._store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        context = _start_method(on_cuda=visible is not None)
        threads = max(1, torch.get_num_threads() // self.layout.degree)
        for index in range(self.layout.degree):
            here, there = context.Pipe()
            spec = ranks.RankSpec(
                rank=index,
                layout=self.layout,
                config=self.config,
                store_port=self._store.port,
                visible_gpus=visible,
                timeout_s=self.collective_timeout_s,
                threads=threads,
                log_level=logger.getEffectiveLevel(),
                profile=self.profile,
            )
            process = context.Process(
                target=ranks.main, args=(spec, there), name=f"flux2-rank-{index}"
            )
            process.start()
            there.close()  # the rank's end lives in the rank: its death closes the pipe
            self._ranks.append(_Rank(index, process, here))
        self._finalizer = weakref.finalize(self, _end, [r.process for r in self._ranks])
        logger.info(
            "parallel %s: started %d ranks (pids %s) on %s",
            self.layout,
            self.layout.degree,
            ", ".join(map(str, self.pids)),
            f"GPUs {visible}" if visible else f"the CPU, {threads} thread(s) each",
        )
        self.reports = self._wait_until_loaded()
        self._log_plan(time.perf_counter() - started)

    @staticmethod
    def _with_turbo_lora(config: Flux2EngineConfig) -> Flux2EngineConfig:
        """The configuration the ranks load: the Turbo LoRA found (beside the model, or given)
        and fused, or none. A group holds the Turbo LoRA fused, so it serves one regime when
        there is one (real weights refuse the turbo regime without it, as a single engine).

        Raises:
            ConfigError: both regimes asked for with a Turbo LoRA.
            WeightsError: real weights, the turbo regime and no Turbo LoRA.
        """
        path = Path(config.model_path)
        turbo = turbo_lora_path(path, config.lora_path)
        require_turbo_lora(path, config.regimes, config.schedule, turbo)
        mode = turbo_mode(config.regimes, turbo)
        if mode is TurboMode.ADAPTER:
            raise ConfigError(
                "a parallel group serves either the flash/turbo endpoints (the Turbo LoRA fused) "
                "or the base ones, not both: set FLUX2_ENDPOINTS to one kind, or run the other "
                "kind on a server without FLUX2_PARALLEL"
            )
        return dataclasses.replace(config, lora_path=turbo if mode is TurboMode.FUSED else None)

    def _visible_gpus(self) -> str | None:
        """``CUDA_VISIBLE_DEVICES`` for the ranks, or None on the CPU."""
        device = self.config.device
        if device.startswith("cuda:"):
            raise ConfigError(f"device={device} with parallel={self.layout}: set gpus instead")
        if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
            return None
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device} asked for, but CUDA is not available here")
        gpus = self.gpus if self.gpus is not None else tuple(range(self.layout.degree))
        if len(gpus) != self.layout.degree:
            raise ConfigError(f"parallel={self.layout} needs {self.layout.degree} GPUs: {gpus}")
        count = torch.cuda.device_count()
        if max(gpus) >= count:
            raise ConfigError(
                f"gpus={','.join(map(str, gpus))}: this machine shows {count} CUDA device(s)"
            )
        # Indices are this process's view; map them through its own CUDA_VISIBLE_DEVICES.
        names = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        mapped = [names[g] if names[0] and g < len(names) else str(g) for g in gpus]
        return ",".join(mapped)

    def _wait_until_loaded(self) -> list[dict[str, Any]]:
        reports: dict[int, dict[str, Any]] = {}
        failure: Flux2Error | None = None
        while len(reports) < self.layout.degree and failure is None:
            index, message = self._receive()
            if message[0] == "ready":
                reports[index] = message[1]
            elif message[0] == "failed":
                failure = message[1]
            else:
                failure = WorkerDead(f"rank {index}: {message}")
        if failure is not None:
            self._end_ranks()
            logger.error("parallel %s: a rank could not load: %s", self.layout, failure)
            raise failure
        return [reports[i] for i in range(self.layout.degree)]

    def _log_plan(self, seconds: float) -> None:
        first = self.reports[0]
        log = logger.info if first["plan_fits"] else logger.warning
        log("parallel %s: memory %s: %s", self.layout, first["profile"], first["plan_reason"])
        for line in first["plan"] if first["profile"] != "cpu" else ():
            log("parallel %s: %s", self.layout, line)
        logger.info(
            "parallel %s: ready in %.1f s (%s)",
            self.layout,
            seconds,
            "; ".join(
                f"rank {r['rank']} pid {r['pid']} on {r['device']}, "
                f"{r['memory_bytes'] / 1e9:.2f} GB peak"
                for r in self.reports
            ),
        )

    def warmup(self) -> None:
        """The one-process engine's warm-up edits, run by the group."""
        started = time.perf_counter()
        for request in warmup_requests(
            self.config.reference_pixels,
            compile_blocks=self.config.compile_blocks,
            regimes=self.config.regimes,
            turbo_steps=self.num_steps,
        ):
            self.run([request])
        logger.info("parallel %s: warm-up took %.1f s", self.layout, time.perf_counter() - started)

    def close(self) -> None:
        """Stop the ranks (after the running batch, which ``run`` waits for)."""
        for rank in self._ranks:
            with suppress(OSError):
                rank.conn.send(("close",))
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for rank in self._ranks:
            rank.process.join(max(0.1, deadline - time.monotonic()))
        self._end_ranks()

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        batch: Sequence[EditRequest],
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[EditResult]:
        """Run ``batch`` on the group (see :meth:`EditEngine.run`).

        Raises:
            InvalidRequest, GenerationFailed, OutOfMemory: as the one-process engine.
            WorkerDead: the group is down (a rank died or failed while denoising).
        """
        if self.dead is not None:
            raise WorkerDead(f"parallel {self.layout} is down: {self.dead}")
        if not self._ranks:
            raise GenerationFailed("the parallel engine is not loaded; call load() first")
        for request in batch:
            self._check_request(request)
        leader = self._ranks[0].conn
        try:
            for follower in self._ranks[1:]:
                follower.conn.send(("follow",))
            leader.send(("run", list(batch), should_cancel is not None))
        except OSError as exc:
            raise self._down(f"cannot reach the ranks ({exc})") from exc
        failed: Exception | None = None  # a callback raised: cancel the rest, then fail
        while True:
            index, message = self._receive()
            kind = message[0]
            if kind == "step":
                if on_step is not None and failed is None:
                    try:
                        on_step(message[1])
                    except Exception as exc:
                        failed = exc
            elif kind == "ask":
                ids: list[str] = message[1]
                leader.send(("cancelled", ids if failed else _cancelled(ids, should_cancel)))
            elif kind == "done":
                self._cache_stats = message[2]
                if failed is not None:
                    raise GenerationFailed(f"generation failed: {failed}") from failed
                return list(message[1])
            elif kind == "error":
                raise message[1]
            else:  # "fatal", or anything unexpected
                raise self._down(self._cause(index, message))

    def _check_request(self, request: EditRequest) -> None:
        """What a group cannot run is refused before the ranks see it: LoRAs, step caching,
        and regimes it does not serve.

        ``acceleration: none`` runs like ``regular`` on a group: the ranks' attention backend
        must split attention across GPUs, and a computation spread over ranks is not the
        one-process diffusers computation bit for bit anyway (docs/operations.md).

        Raises:
            InvalidRequest: naming the field.
        """
        check_regime(request, self.config.regimes, self.config.schedule)
        if request.loras:
            self.check_lora(request.loras[0])
        if request.regime == "base" and request.acceleration == "high":
            raise InvalidRequest(
                f"acceleration 'high' (step caching) is not available when one request runs "
                f"on several GPUs (parallel={self.layout}); use 'regular'",
                loc=("body", "acceleration"),
                type="value_error",
                input="high",
            )

    def set_profiling(self, on: bool) -> None:
        """Time the collectives of the next batches with the torch profiler (benchmarks)."""
        for rank in self._ranks:
            rank.conn.send(("profile", on))

    def rank_stats(self) -> list[dict[str, Any]]:
        """Every rank's counters (time denoising, in broadcasts and collectives, memory)."""
        for rank in self._ranks:
            rank.conn.send(("stats",))
        return [self._receive(only=rank)[1][1] for rank in list(self._ranks)]

    # -- the ranks ---------------------------------------------------------------------------

    def _receive(self, only: _Rank | None = None) -> tuple[int, tuple[Any, ...]]:
        """The next message from any rank (or from ``only``); a rank that died brings the group
        down."""
        while True:
            watched = [only] if only is not None else self._ranks
            ready = wait([rank.conn for rank in watched])
            for rank in watched:
                if rank.conn not in ready:
                    continue
                try:
                    message: tuple[Any, ...] = rank.conn.recv()
                except (EOFError, OSError):  # its end closed: the process is gone
                    raise self._down(self._obituary(rank)) from None
                return rank.index, message

    def _cause(self, index: int, message: tuple[Any, ...]) -> str:
        """Why the group failed: a rank that died is the cause (the others' collectives fail
        because of it), else what the reporting rank said."""
        said = f"rank {index}: {message[1] if len(message) > 1 else message}"
        for rank in self._ranks:
            rank.process.join(0.5)
        dead = [
            self._obituary(rank)
            for rank in self._ranks
            if rank.index != index and rank.process.exitcode not in (None, 0)
        ]
        return f"{'; '.join(dead)} ({said})" if dead else said

    def _obituary(self, rank: _Rank) -> str:
        rank.process.join(5)
        code = rank.process.exitcode
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = "still running" if code is None else f"exited with code {code}"
        return f"rank {rank.index} (pid {rank.process.pid}) {how}"

    def _down(self, reason: str) -> WorkerDead:
        """End every rank; from now on the engine only raises :class:`WorkerDead`."""
        if self.dead is None:
            self.dead = reason
            logger.error(
                "parallel %s: the group is down: %s; ending the other ranks (restart the worker)",
                self.layout,
                reason,
            )
        self._end_ranks()
        return WorkerDead(f"parallel {self.layout} is down: {reason}")

    def _end_ranks(self) -> None:
        _end([rank.process for rank in self._ranks])
        for rank in self._ranks:
            rank.conn.close()
        self._ranks = []
        self._store = None


def _start_method(*, on_cuda: bool) -> Any:
    """How rank processes start: ``spawn`` on CUDA (a fresh interpreter: CUDA cannot be used in
    a process forked from one that touched it); on the CPU, forked from a ``forkserver`` that
    imported torch, diffusers and the rank module once, so a group starts in about a second
    instead of paying those imports (tens of seconds on a small machine) for every rank."""
    if on_cuda:
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["pipelines.ranks"])
    return context


def _cancelled(ids: list[str], should_cancel: CancelCheck | None) -> list[str]:
    if should_cancel is None:
        return []
    return [request_id for request_id in ids if should_cancel(request_id)]


def _end(processes: list[BaseProcess]) -> None:
    """Kill the rank processes still running (they ignore SIGTERM: the driver ends them)."""
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(10)


__all__ = ["COLLECTIVE_TIMEOUT_S", "ParallelEngine"]
