"""One rank of a parallel group: its process, its share of the model and its loop.

:class:`pipelines.parallel.ParallelEngine` starts one process per rank (``spawn``) running
:func:`main`. Every rank loads the transformer with diffusers' parallelism (Ulysses:
``enable_parallelism(ContextParallelConfig(ulysses_degree=N))``; tensor parallelism:
``from_pretrained(..., parallel_config=TensorParallelConfig(tp_degree=N))``, which reads only the
rank's slice of each split weight). Rank 0 also holds the text encoder and the VAE, so it alone
encodes prompts and references and decodes; the other ranks hold the transformer and the
scheduler only. Then each rank serves the driver over its pipe::

    driver ─("run", batch, ask)─▶ rank 0: prepare ─ share ─ denoise with all ─ decode ─("done")─▶
    driver ─("follow",)────────▶ rank k:        receive ─ denoise with all ─ ... until END

Rank 0 runs :class:`~pipelines.flux2.Flux2Engine`'s own steps (``_prepare``, ``_denoise``,
``_finish``); it sends ``("step", event)`` after each step and, when the driver has a cancel
check, asks it ``("ask", ids)`` before each step; :class:`~pipelines.group.GroupLink` makes every
rank drop the same requests at the same step. An error before the denoising (a bad reference,
out of memory in the text encoder) or in the decode fails the batch and the group goes on; an
error during the denoising leaves the ranks out of step, so the rank reports it (``"fatal"``) and
exits, and the driver brings the group down.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pickle
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel

from core.errors import ConfigError, Flux2Error, WeightsError, WorkerDead
from pipelines.flux2 import (
    AUTO,
    Denoising,
    Flux2Engine,
    Flux2EngineConfig,
    _check_attention_backend,
    _check_quantize,
    _choose_attention_backend,
    _fuse_lora,
    _fuse_qkv,
    _quantize_fp8,
    _set_attention_backend,
    _trim_text_encoder,
    quiet_libraries,
)
from pipelines.group import END, GroupLink, adapt_diffusers_to_cpu, join_group
from pipelines.layout import ParallelLayout
from pipelines.memory import (
    ENCODE_ONLY_TEXT_LAYERS,
    ComponentSizes,
    GroupPlan,
    MemoryProfile,
    measure_checkpoint,
    parse_profile,
    plan_group,
)
from pipelines.types import CancelCheck, EditRequest, EditResult, StepCallback

logger = logging.getLogger(__name__)

#: Profiler events that are communication: gloo/NCCL collectives and the waits on them.
COLLECTIVE_WORDS = ("c10d", "gloo", "nccl", "all_to_all", "alltoall", "all_gather", "allgather",
                    "allreduce", "all_reduce", "broadcast", "wait_tensor")  # fmt: skip


@dataclass(frozen=True)
class RankSpec:
    """What one rank process needs to start.

    Args:
        rank, layout: this rank and the group's layout.
        config: the engine configuration (the same for every rank).
        store_port: the driver's TCP store on 127.0.0.1, where the ranks meet.
        visible_gpus: ``CUDA_VISIBLE_DEVICES`` for every rank (the group's GPUs, in rank order:
            rank r uses ``cuda:r``); ``None`` runs on the CPU.
        timeout_s: how long a collective waits for the other ranks before it raises.
        threads: CPU threads (the CPU's cores shared between the ranks).
        log_level: the driver's logging level.
        profile: time the collectives inside each denoising with the torch profiler (benchmarks;
            the driver can turn it on and off later).
    """

    rank: int
    layout: ParallelLayout
    config: Flux2EngineConfig
    store_port: int
    visible_gpus: str | None
    timeout_s: float
    threads: int = 1
    log_level: int = logging.WARNING
    profile: bool = False


class RankEngine(Flux2Engine):
    """The FLUX.2 engine of one rank: a share of the transformer, and rank 0's batch steps."""

    def __init__(self, spec: RankSpec, device: torch.device) -> None:
        super().__init__(dataclasses.replace(spec.config, device=str(device)))
        self.spec = spec
        self.layout = spec.layout
        self.rank = spec.rank
        self.link = GroupLink(spec.rank, device)
        self.group_plan: GroupPlan | None = None
        self.load_seconds = 0.0
        self.denoise_seconds = 0.0
        self.comm_seconds = 0.0  # profiled collectives, while ``profiling``
        self.profiling = spec.profile
        self.steps = 0
        self._driver: Connection | None = None
        self._ask = False

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        """Load this rank's share of the model (see the module docstring).

        Raises:
            WeightsError: the checkpoint is missing or unreadable.
            ConfigError: a setting cannot work in a group, or on this device.
        """
        config = self.config
        path = Path(config.model_path)
        if not (path / "model_index.json").is_file():
            raise WeightsError(f"{path} is not a diffusers checkpoint (no model_index.json)")
        self._check_settings()
        self.group_plan = self._plan_group(path)
        started = time.perf_counter()
        transformer, sharded = self._read_transformer(path)
        pipe = self._pipeline(path, transformer)
        if not sharded:
            if self.layout.kind == "ulysses":
                transformer.to(self.device)
            if config.lora_path is not None:
                _fuse_lora(pipe, Path(config.lora_path), config.lora_scale)
            if config.fuse_qkv:
                _fuse_qkv(transformer)
            if config.quantize == "fp8":
                _quantize_fp8(transformer, self.device)
        self._set_attention(transformer)  # context parallelism checks the backend
        if not sharded:
            self._parallelize(transformer)
            transformer.to(self.device)  # tensor parallelism: the replicated rest
        self._place(pipe)
        if config.compile_blocks:
            transformer.compile_repeated_blocks(fullgraph=True)
        self._pipe = pipe
        self.load_seconds = time.perf_counter() - started

    def _check_settings(self) -> None:
        config = self.config
        if self.layout.kind == "tp" and config.fuse_qkv:
            raise ConfigError(
                "fuse_qkv cannot be used with parallel=tp: the fused projections are not in "
                "diffusers' tensor-parallel plan (use ulysses, or leave fuse_qkv off)"
            )
        if self.layout.kind == "tp" and config.quantize is not None:
            raise ConfigError(
                f"quantize={config.quantize} cannot be used with parallel=tp: diffusers cannot "
                "shard quantized weights (use ulysses, or leave quantize off)"
            )
        _check_quantize(config.quantize, self.device)
        if config.attention_backend not in (None, AUTO):
            _check_attention_backend(config.attention_backend, self.device, self.dtype)

    def _plan_group(self, path: Path) -> GroupPlan:
        """Every rank's need against every rank's free GPU memory (each rank plans the same)."""
        override = parse_profile(self.config.memory_profile)
        if self.device.type != "cuda":
            return plan_group(None, ComponentSizes(0, 0, 0), self.layout, override=override)
        sizes = measure_checkpoint(
            path,
            dtype_bytes=self.dtype.itemsize,
            text_layers=ENCODE_ONLY_TEXT_LAYERS,
            tp_patterns=tuple(Flux2Transformer2DModel._tp_plan),
        )
        free, _ = torch.cuda.mem_get_info(self.device)
        everyone: list[Any] = [None] * self.layout.degree
        dist.all_gather_object(everyone, free)
        return plan_group(
            [int(f) for f in everyone],
            sizes,
            self.layout,
            override=override,
            fp8=self.config.quantize == "fp8",
            encode_only_text_encoder=not self.config.allow_prompt_expansion,
            extra_bytes=self.config.prompt_cache_bytes,
        )

    def _read_transformer(self, path: Path) -> tuple[Any, bool]:
        """The transformer, and whether it is already parallel: tensor parallelism without a
        LoRA reads only this rank's slices; otherwise the whole transformer is read first (a
        LoRA must be fused into whole weights)."""
        options: dict[str, Any] = {
            "subfolder": "transformer",
            "dtype": self.dtype,
            "local_files_only": True,
            "use_safetensors": True,
        }
        sharded = self.layout.kind == "tp" and self.config.lora_path is None
        if sharded:
            options["parallel_config"] = self._parallel_config()
        try:
            return Flux2Transformer2DModel.from_pretrained(path, **options), sharded
        except Exception as exc:
            raise WeightsError(f"rank {self.rank} cannot load the transformer: {exc}") from exc

    def _pipeline(self, path: Path, transformer: Any) -> Flux2Pipeline:
        if self.rank != 0:  # the transformer and the scheduler: all the steps need
            scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
            return Flux2Pipeline(
                scheduler=scheduler,
                vae=None,
                text_encoder=None,
                tokenizer=None,
                transformer=transformer,
            )
        try:
            pipe = Flux2Pipeline.from_pretrained(
                path,
                transformer=transformer,
                dtype=self.dtype,
                local_files_only=True,
                use_safetensors=True,
            )
        except Exception as exc:
            raise WeightsError(f"cannot load FLUX.2 from {path}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        if not self.config.allow_prompt_expansion:
            _trim_text_encoder(pipe.text_encoder, ENCODE_ONLY_TEXT_LAYERS)
        return pipe

    def _parallel_config(self) -> Any:
        from diffusers.models._modeling_parallel import (
            ContextParallelConfig,
            TensorParallelConfig,
        )

        if self.layout.kind == "tp":
            return TensorParallelConfig(tp_degree=self.layout.degree)
        # ulysses_anything: token counts (references of any size) and head counts the degree
        # does not divide; it costs a few small size exchanges per attention.
        return ContextParallelConfig(ulysses_degree=self.layout.degree, ulysses_anything=True)

    def _parallelize(self, transformer: Any) -> None:
        try:
            transformer.enable_parallelism(config=self._parallel_config())
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot run parallel={self.layout}: {exc}") from exc

    def _set_attention(self, transformer: Any) -> None:
        backend = self.config.attention_backend
        if backend == AUTO:
            only = None
            if self.layout.kind == "ulysses":  # the backends that can split attention
                from diffusers.models.attention_dispatch import _AttentionBackendRegistry

                only = set(_AttentionBackendRegistry._supports_context_parallel)
            self.attention_backend = _choose_attention_backend(
                transformer, self.device, self.dtype, only
            )
        elif backend is not None:
            _set_attention_backend(transformer, backend, self.device)
            self.attention_backend = backend

    def _place(self, pipe: Flux2Pipeline) -> None:
        """Rank 0's text encoder and VAE, as planned; the other ranks have neither."""
        assert self.group_plan is not None
        profile = self.group_plan.profile
        if self.rank != 0 or profile is MemoryProfile.CPU:
            return
        pipe.vae.to(self.device)
        if profile is MemoryProfile.RESIDENT:
            pipe.text_encoder.to(self.device)
        else:
            self._text_device = torch.device("cpu")

    # -- running -----------------------------------------------------------------------------

    def lead(self, driver: Connection, batch: Sequence[EditRequest], *, ask: bool) -> None:
        """Rank 0: run ``batch`` with the group and answer the driver.

        Raises:
            WorkerDead: the group failed while denoising; it cannot go on.
        """
        self._driver, self._ask = driver, ask
        try:
            results = self.run(batch, on_step=lambda event: driver.send(("step", event)))
        except WorkerDead:
            raise
        except Flux2Error as exc:
            self.link.share(END)
            driver.send(("error", portable(exc)))
            return
        self.link.share(END)
        driver.send(("done", results, self.prompt_cache_stats()))

    @torch.no_grad()
    def _run_group(
        self,
        requests: list[EditRequest],
        on_step: StepCallback | None,
        should_cancel: CancelCheck | None,
    ) -> list[EditResult]:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            work = self._prepare(requests, timings)
        except BaseException:
            self.link.share(None)  # nothing to denoise: the others wait for the next batch
            raise
        self.link.share(work)
        mark = time.perf_counter()
        alive = self._denoise_together(work, self._agreed(requests), on_step, requests)
        timings["denoise"] = time.perf_counter() - mark
        return self._finish(requests, work, alive, timings, started)

    def _agreed(self, requests: list[EditRequest]) -> Callable[[set[int]], set[int]]:
        """Before each step: ask the driver which requests were cancelled, tell every rank."""

        def decide(alive: set[int]) -> set[int]:
            wanted = alive
            if self._ask and self._driver is not None:
                self._driver.send(("ask", [requests[i].request_id for i in sorted(alive)]))
                _, cancelled = self._driver.recv()
                wanted = {i for i in alive if requests[i].request_id not in set(cancelled)}
            return self.link.agree(len(requests), wanted)

        return decide

    @torch.no_grad()
    def follow(self) -> None:
        """Ranks 1..N-1: denoise every batch rank 0 shares, until it says the run is over."""
        while True:
            work = self.link.share(None)
            if work == END:
                return
            if not isinstance(work, Denoising):
                continue  # rank 0 failed before denoising: nothing to do
            self._set_timesteps(work)
            decide = functools.partial(self.link.agree, work.requests)
            self._denoise_together(work, decide, None, None)

    def _denoise_together(
        self,
        work: Denoising,
        decide: Callable[[set[int]], set[int]],
        on_step: StepCallback | None,
        requests: list[EditRequest] | None,
    ) -> set[int]:
        stepped = self._reporter(requests, work, on_step) if requests else None
        started = time.perf_counter()
        try:
            with self._profiled():
                alive = self._denoise(work, decide, stepped)
        except Exception as exc:
            raise WorkerDead(
                f"rank {self.rank} failed while the group was denoising "
                f"({type(exc).__name__}: {exc}); the group cannot go on"
            ) from exc
        self.denoise_seconds += time.perf_counter() - started
        self.steps += work.steps
        return alive

    @contextmanager
    def _profiled(self) -> Iterator[None]:
        """While ``profiling``: add the time spent in collectives to ``comm_seconds``."""
        if not self.profiling:
            yield
            return
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            yield
        self.comm_seconds += (
            sum(
                event.self_cpu_time_total
                for event in profiler.key_averages()
                if any(word in event.key.lower() for word in COLLECTIVE_WORDS)
            )
            / 1e6
        )

    # -- reports -----------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """What the driver logs once the rank is loaded."""
        plan = self.group_plan
        return {
            "rank": self.rank,
            "pid": os.getpid(),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "load_s": round(self.load_seconds, 2),
            "plan": plan.lines() if plan is not None and self.rank == 0 else [],
            "plan_reason": plan.reason if plan is not None else "",
            "plan_fits": plan.fits if plan is not None else True,
            "profile": plan.profile.value if plan is not None else "",
            "memory_bytes": self._memory_bytes(),
        }

    def stats(self) -> dict[str, Any]:
        """Counters for benchmarks: time denoising, in the group's broadcasts, in collectives."""
        link = self.link.stats
        return {
            "rank": self.rank,
            "pid": os.getpid(),
            "steps": self.steps,
            "denoise_s": round(self.denoise_seconds, 4),
            "comm_s": round(self.comm_seconds, 4),
            "share_s": round(link.share_s, 4),
            "agree_s": round(link.agree_s, 4),
            "bytes_shared": link.bytes_shared,
            "memory_bytes": self._memory_bytes(),
        }

    def _memory_bytes(self) -> int:
        """Peak GPU memory allocated on CUDA; the process's peak resident memory on the CPU."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def portable(exc: BaseException) -> Flux2Error:
    """``exc`` as an error the driver can unpickle: ours as they are, others wrapped."""
    if isinstance(exc, Flux2Error):
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:
            return Flux2Error(exc.message)
    return Flux2Error(f"{type(exc).__name__}: {exc}")


def serve(engine: RankEngine, driver: Connection) -> None:
    """The rank's loop: run, follow or report, as the driver says, until it closes the pipe."""
    while True:
        message = driver.recv()
        kind = message[0]
        if kind == "close":
            return
        if kind == "stats":
            driver.send(("stats", engine.stats()))
        elif kind == "profile":
            engine.profiling = bool(message[1])
        elif kind == "run":
            engine.lead(driver, message[1], ask=message[2])
        elif kind == "follow":
            engine.follow()


def main(spec: RankSpec, driver: Connection) -> None:
    """The entry point of a rank process (``multiprocessing`` spawn target)."""
    if spec.visible_gpus is not None:  # before anything starts CUDA: rank r is cuda:r
        os.environ["CUDA_VISIBLE_DEVICES"] = spec.visible_gpus
    # The driver drains and closes the group: Ctrl-C or a SIGTERM sent to the whole process
    # group must not kill a rank in the middle of a batch.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s %(levelname)s rank {spec.rank} %(name)s: %(message)s",
    )
    quiet_libraries()
    device = torch.device("cuda", spec.rank) if spec.visible_gpus else torch.device("cpu")
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            adapt_diffusers_to_cpu()
            torch.set_num_threads(spec.threads)
        join_group(spec.rank, spec.layout.degree, spec.store_port, device, spec.timeout_s)
        engine = RankEngine(spec, device)
        engine.load()
    except Exception as exc:
        driver.send(("failed", portable(exc)))
        return
    driver.send(("ready", engine.report()))
    try:
        serve(engine, driver)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the driver is gone: so is the group
    except Exception as exc:
        reason = exc.message if isinstance(exc, Flux2Error) else f"{type(exc).__name__}: {exc}"
        logger.error("rank %d: %s", spec.rank, reason)
        with suppress(OSError):
            driver.send(("fatal", reason))
        sys.exit(1)
    dist.destroy_process_group()


__all__ = ["RankEngine", "RankSpec", "main", "portable", "serve"]
