"""The FLUX.2 [dev] engine on diffusers ``Flux2Pipeline``: edits and text-to-image, two regimes.

Why not just call ``pipe(...)``? One ``__call__`` shares its reference images across the whole
batch (``prepare_image_latents`` repeats them), so it cannot serve several requests that edit
*different* images. :meth:`Flux2Engine.run` therefore runs the pipeline's own pieces in the same
order as ``__call__`` (``encode_prompt``, ``prepare_image_latents`` per request,
``prepare_latents``, ``compute_empirical_mu`` + ``retrieve_timesteps``, the transformer and
``scheduler.step``, then the VAE decode), with one batch row per output image. For a batch of one
the result equals a direct ``Flux2Pipeline.__call__`` pixel for pixel (tested on the CPU).

Other departures from ``__call__``, each deliberate:

* every output image has its own CPU generator seeded ``seed + k``, so its pixels do not depend on
  the batch it ran in (up to kernel blocking noise across batch shapes);
* prompts are encoded one at a time, so an embedding never depends on its batch either;
* each row carries its own guidance value, so requests with different ``guidance_scale`` share a
  batch;
* cancellation is checked before every step; a cancelled request's rows are dropped at once and it
  is never decoded (``pipe._interrupt`` would still decode);
* prompt expansion calls ``upsample_prompt(prompt, images=[refs])`` itself, working around the
  multi-image bug of diffusers 0.42.1 (``__call__`` passes a flat list).

The FLUX.2 family on one set of weights (issue 13). A request without references is
text-to-image: the transformer then sees the target tokens alone, as ``__call__`` without
``image``. Its ``regime`` picks the schedule and adapters (:mod:`pipelines.regimes`): ``turbo``,
the Turbo LoRA recipe; ``base``, FLUX.2 [dev]'s own schedule with the request's step count and
no Turbo LoRA. Request LoRAs are loaded through diffusers' LoRA API into an LRU on the device
and made active per sub-batch with ``set_adapters`` (:mod:`pipelines.adapters`); the base
regime's ``acceleration`` wraps the denoising loop (:mod:`pipelines.acceleration`). Requests of
different regimes, step counts, levels or adapter sets never share a sub-batch (their
``batch_key`` differs); parity with ``Flux2Pipeline`` holding the same adapters is tested.

Where the weights live is planned at load time (:mod:`pipelines.memory`: ``resident``,
``offload_text_encoder``, ``model_offload`` or ``cpu``, from the GPU's free memory and the
checkpoint's component sizes, or set by ``memory_profile``). The fast paths (attention backend,
fused QKV projections, regional ``torch.compile``, fp8 weights) are settings, all off by default
until a GPU benchmark shows what each is worth; they are applied in :meth:`Flux2Engine.load`, and
:meth:`Flux2Engine.warmup` runs after them, so the compile happens before the first request.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import Flux2Pipeline
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu, retrieve_timesteps
from PIL import Image

from core.errors import (
    ConfigError,
    Flux2Error,
    GenerationFailed,
    InvalidRequest,
    OutOfMemory,
    WeightsError,
)
from pipelines import previews
from pipelines.acceleration import accelerated
from pipelines.adapters import AdapterCache, linear_shapes
from pipelines.memory import (
    ENCODE_ONLY_TEXT_LAYERS,
    ComponentSizes,
    MemoryProfile,
    Plan,
    measure_checkpoint,
    parse_profile,
    plan,
)
from pipelines.prompt_cache import CacheStats, PromptEmbeddingCache
from pipelines.references import resize_reference
from pipelines.regimes import (
    TURBO_ADAPTER,
    TurboMode,
    check_regime,
    require_turbo_lora,
    sigmas_for,
    turbo_lora_path,
    turbo_mode,
)
from pipelines.schedules import SCHEDULES, FlashSchedule
from pipelines.sizes import DEFAULT_PRESET, PRESETS, REFERENCE_PIXELS, ImageSize
from pipelines.types import (
    Acceleration,
    CancelCheck,
    EditRequest,
    EditResult,
    LoraWeights,
    Preview,
    Regime,
    StepCallback,
    StepEvent,
    preview_plan,
)

logger = logging.getLogger(__name__)

TEXT_ENCODER_LAYERS = (10, 20, 30)  # Flux2Pipeline's default hidden states
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZE_CHOICES = ("fp8",)
FP8_MIN_CAPABILITY = (8, 9)  # Ada, Hopper, Blackwell: float8 tensor cores
#: Attention backends that run on the CPU; on CUDA every backend whose package is installed.
CPU_ATTENTION_BACKENDS = ("native", "_native_math")
AUTO = "auto"
_UNSIZED = ComponentSizes(0, 0, 0)  # a CPU engine plans without reading the checkpoint


@dataclass(frozen=True)
class Flux2EngineConfig:
    """How to load and run FLUX.2.

    Args:
        model_path: a local diffusers-layout checkpoint directory (never a hub id).
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``, ``bfloat16``, ``float16``.
        lora_path: the Turbo LoRA file (``flux.2-turbo-lora.safetensors``); None: the one
            ``flux2-edit weights download`` put beside the model, if any
            (:mod:`pipelines.regimes`). Fused at load time when ``regimes`` is ``{"turbo"}``,
            else kept as an adapter switched on for turbo batches.
        lora_scale: the Turbo LoRA's weight.
        regimes: the denoising regimes served (``turbo``, ``base``); requests of another are
            refused. On real weights ``turbo`` needs the Turbo LoRA.
        adapter_cache_bytes: device memory for request LoRAs kept loaded between batches.
        schedule: the flash step schedule.
        reference_pixels: reference images are resized to about this many pixels.
        expansion_temperature: sampling temperature of prompt expansion.
        max_sequence_length: text tokens per prompt.
        prompt_cache_bytes: memory for cached prompt embeddings (0 turns the cache off).
        memory_profile: ``auto`` (planned from the GPU's free memory) or a
            :class:`~pipelines.memory.MemoryProfile` name. A profile that does not fit still
            applies, with a warning; a GPU profile on a CPU device is a ``ConfigError``.
        attention_backend: a diffusers attention backend (``native``, ``flash``,
            ``_flash_3_hub``, ...); ``auto`` the best one that loads here (FlashAttention 3 on
            Hopper, then FlashAttention 2, then ``native``); ``None`` keeps diffusers' default
            (``native``, PyTorch SDPA).
        fuse_qkv: fuse the double-stream blocks' Q/K/V projections into one matmul.
        compile_blocks: ``torch.compile`` the repeated transformer blocks (regional
            compilation, ``fullgraph=True``); the compile runs in :meth:`Flux2Engine.warmup`.
        quantize: ``fp8`` stores the transformer's linear weights in float8 with dynamic float8
            activations (torchao, CUDA compute capability >= 8.9); ``None`` keeps ``dtype``.
        allow_prompt_expansion: ``False`` rejects requests asking for prompt expansion and trims
            the text encoder to what prompt encoding reads (31 decoder layers; no ``lm_head``,
            vision tower or projector): 48.0 GB -> 35.8 GB for FLUX.2 [dev].
    """

    model_path: Path
    device: str = "auto"
    dtype: str = "auto"
    lora_path: Path | None = None
    lora_scale: float = 1.0
    regimes: frozenset[Regime] = frozenset({"turbo", "base"})
    adapter_cache_bytes: int = 2 * 1024 * 1024 * 1024
    schedule: FlashSchedule = field(default_factory=lambda: SCHEDULES["turbo"])
    reference_pixels: int = REFERENCE_PIXELS
    expansion_temperature: float = 0.15
    max_sequence_length: int = 512
    prompt_cache_bytes: int = 512 * 1024 * 1024
    memory_profile: str = "auto"
    attention_backend: str | None = None
    fuse_qkv: bool = False
    compile_blocks: bool = False
    quantize: str | None = None
    allow_prompt_expansion: bool = True


@dataclass
class Rows:
    """The batch tensors, one row per output image, that shrink when requests are cancelled."""

    owners: list[int]  # request index of each row
    latents: torch.Tensor
    latent_ids: torch.Tensor
    image_latents: torch.Tensor
    image_ids: torch.Tensor
    prompt_embeds: torch.Tensor
    text_ids: torch.Tensor
    guidance: torch.Tensor

    def keep(self, alive: set[int]) -> None:
        index = [row for row, owner in enumerate(self.owners) if owner in alive]
        if len(index) == len(self.owners):
            return
        self.owners = [self.owners[row] for row in index]
        picked = torch.tensor(index, device=self.latents.device)
        for name in (
            "latents",
            "latent_ids",
            "image_latents",
            "image_ids",
            "prompt_embeds",
            "text_ids",
            "guidance",
        ):
            setattr(self, name, getattr(self, name).index_select(0, picked))


@dataclass
class Denoising:
    """One sub-batch between preparation and decoding: its rows and its schedule.

    ``requests`` counts the requests (``rows.owners`` index them); ``sigmas`` and ``mu`` are what
    the scheduler was given, so another process can set its scheduler the same way.
    """

    requests: int
    rows: Rows
    steps: int
    sigmas: list[float]
    mu: float
    prompts_used: list[str] = field(default_factory=list)
    timesteps: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    #: Step caching extrapolates whole-batch tensors: cancelled rows then stay until the loop
    #: ends (their results are still dropped at once, and never decoded).
    keep_rows: bool = False


def wanted_by(
    requests: Sequence[EditRequest], should_cancel: CancelCheck | None
) -> Callable[[set[int]], set[int]]:
    """The requests of ``alive`` that ``should_cancel`` does not cancel (asked per request)."""

    def decide(alive: set[int]) -> set[int]:
        if should_cancel is None:
            return alive
        return {i for i in alive if not should_cancel(requests[i].request_id)}

    return decide


class Flux2Engine:
    """FLUX.2 [dev] image editing with a flash schedule (see the module docstring)."""

    def __init__(self, config: Flux2EngineConfig) -> None:
        self.config = config
        self.device = _resolve_device(config.device)
        self.dtype = _resolve_dtype(config.dtype, self.device)
        self._pipe: Flux2Pipeline | None = None
        self.prompt_cache = PromptEmbeddingCache(config.prompt_cache_bytes)
        self.plan: Plan | None = None
        self.adapters: AdapterCache | None = None  # once loaded
        self.turbo_mode = TurboMode.NONE
        self.attention_backend: str | None = None  # the one set, once loaded
        # Where the text encoder runs and where everything else computes: they differ when the
        # text encoder is offloaded (pipe._execution_device then names the GPU, which is wrong
        # for encode_prompt and upsample_prompt).
        self._text_device = self.device
        self._compute_device = self.device

    @property
    def num_steps(self) -> int:
        return self.config.schedule.num_inference_steps

    def prompt_cache_stats(self) -> CacheStats | None:
        return self.prompt_cache.stats

    def adapter_cache_stats(self) -> CacheStats | None:
        """Counters of the request-LoRA cache (hits, misses, bytes); None before loading."""
        return self.adapters.stats if self.adapters is not None else None

    def check_lora(self, lora: LoraWeights) -> None:
        """Raise :class:`InvalidRequest` when ``lora`` cannot be applied to this model (not
        safetensors, unreadable, keys or shapes for another model: see
        :func:`pipelines.adapters.read_lora`). Safe to call while :meth:`run` runs."""
        if self.adapters is None:
            raise GenerationFailed("the FLUX.2 engine is not loaded; call load() first")
        self.adapters.check(lora)

    @property
    def pipe(self) -> Flux2Pipeline:
        if self._pipe is None:
            raise GenerationFailed("the FLUX.2 engine is not loaded; call load() first")
        return self._pipe

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        """Load the weights, place them as planned and apply the configured fast paths.

        Raises:
            WeightsError: the checkpoint is missing or unreadable.
            ConfigError: a setting cannot work here (unknown memory profile or attention
                backend, fp8 without a suitable GPU, a GPU profile on the CPU).
        """
        config = self.config
        path = Path(config.model_path)
        if not (path / "model_index.json").is_file():
            raise WeightsError(
                f"{path} is not a diffusers checkpoint (no model_index.json). Build the tiny one "
                "with 'flux2-edit weights tiny DIR' or fetch FLUX.2 [dev] with "
                "'flux2-edit weights download'."
            )
        # 1. Check the settings before spending minutes on loading.
        override = parse_profile(config.memory_profile)
        _check_quantize(config.quantize, self.device)
        if config.attention_backend not in (None, AUTO):
            _check_attention_backend(config.attention_backend, self.device, self.dtype)
        turbo = turbo_lora_path(path, config.lora_path)
        require_turbo_lora(path, config.regimes, config.schedule, turbo)
        self.turbo_mode = mode = turbo_mode(config.regimes, turbo)
        if mode is TurboMode.ADAPTER and config.fuse_qkv:
            raise ConfigError(
                "fuse_qkv needs the Turbo LoRA fused, which only a server of the flash/turbo "
                "endpoints alone does: turn FLUX2_FUSE_QKV off, or serve one regime"
            )
        self.plan = memory_plan = self._plan(path, override)
        log = logger.info if memory_plan.fits else logger.warning
        log("memory profile %s: %s", memory_plan.profile.value, memory_plan.reason)

        # 2. Load on the CPU.
        started = time.perf_counter()
        try:
            pipe = Flux2Pipeline.from_pretrained(
                path, dtype=self.dtype, local_files_only=True, use_safetensors=True
            )
        except Exception as exc:  # diffusers raises many kinds; all mean "unusable weights"
            raise WeightsError(f"cannot load FLUX.2 from {path}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        if not config.allow_prompt_expansion:
            _trim_text_encoder(pipe.text_encoder, ENCODE_ONLY_TEXT_LAYERS)

        # 3. The transformer first (it is changed in place below), then the rest per profile.
        profile = memory_plan.profile
        if profile in (MemoryProfile.RESIDENT, MemoryProfile.OFFLOAD_TEXT_ENCODER):
            pipe.transformer.to(self.device)
        if mode is TurboMode.FUSED and turbo is not None:
            _fuse_lora(pipe, turbo, config.lora_scale)
        if config.fuse_qkv:
            _fuse_qkv(pipe.transformer)
        if config.quantize == "fp8":
            _quantize_fp8(pipe.transformer, self.device)
        self.adapters = self._adapter_cache(pipe, turbo if mode is TurboMode.ADAPTER else None)
        if profile is MemoryProfile.OFFLOAD_TEXT_ENCODER:
            pipe.vae.to(self.device)
            self._text_device = torch.device("cpu")
        elif profile is MemoryProfile.MODEL_OFFLOAD:
            pipe.enable_model_cpu_offload(device=self.device)
            self._compute_device = pipe._execution_device
            self._text_device = self._compute_device
        else:  # resident or cpu
            pipe.to(self.device)

        # 4. Fast paths on the placed transformer; compile runs lazily, in warmup().
        if config.attention_backend == AUTO:
            self.attention_backend = _choose_attention_backend(
                pipe.transformer, self.device, self.dtype
            )
        elif config.attention_backend is not None:
            _set_attention_backend(pipe.transformer, config.attention_backend, self.device)
            self.attention_backend = config.attention_backend
        if config.compile_blocks:
            pipe.transformer.compile_repeated_blocks(fullgraph=True)
        self._pipe = pipe
        logger.info(
            "loaded FLUX.2 from %s on %s (%s, schedule %s, profile %s%s) in %.1f s",
            path,
            self.device,
            str(self.dtype).removeprefix("torch."),
            config.schedule.name,
            profile.value,
            "".join(f", {name}" for name in self.fast_paths),
            time.perf_counter() - started,
        )

    def _adapter_cache(self, pipe: Flux2Pipeline, turbo: Path | None) -> AdapterCache:
        """The LoRA cache on the (placed) transformer, holding the Turbo LoRA unfused when the
        server serves both regimes."""
        shapes = linear_shapes(pipe.transformer)  # before any adapter wraps a layer
        pinned = (TURBO_ADAPTER,) if turbo is not None else ()
        cache = AdapterCache(
            pipe, self.config.adapter_cache_bytes, self.dtype, shapes, pinned=pinned
        )
        if turbo is not None:
            try:
                cache.load_pinned(TURBO_ADAPTER, turbo)
            except Flux2Error as exc:
                raise WeightsError(f"cannot load the Turbo LoRA {turbo}: {exc.message}") from exc
            logger.info("Turbo LoRA %s kept as an adapter (both regimes served)", turbo)
        return cache

    @property
    def fast_paths(self) -> tuple[str, ...]:
        """The fast paths this engine was configured with, for logs and benchmarks."""
        config = self.config
        paths = []
        if config.attention_backend is not None:
            paths.append(f"attention {self.attention_backend or config.attention_backend}")
        if config.fuse_qkv:
            paths.append("fused QKV")
        if config.compile_blocks:
            paths.append("compiled blocks")
        if config.quantize is not None:
            paths.append(config.quantize)
        if not config.allow_prompt_expansion:
            paths.append("encode-only text encoder")
        return tuple(paths)

    def _plan(self, path: Path, override: MemoryProfile | None) -> Plan:
        if self.device.type != "cuda":
            return plan(None, _UNSIZED, override=override)
        sizes = measure_checkpoint(path, dtype_bytes=self.dtype.itemsize)
        free, total = torch.cuda.mem_get_info(self.device)
        logger.info(
            "GPU %s: %.1f GB free of %.1f GB; weights %.1f GB (transformer %.1f, text encoder "
            "%.1f, VAE %.2f)",
            self.device,
            free / 1e9,
            total / 1e9,
            sizes.total / 1e9,
            sizes.transformer / 1e9,
            sizes.text_encoder / 1e9,
            sizes.vae / 1e9,
        )
        return plan(
            free,
            sizes,
            override=override,
            fp8=self.config.quantize == "fp8",
            encode_only_text_encoder=not self.config.allow_prompt_expansion,
            extra_bytes=self.config.prompt_cache_bytes + self.config.adapter_cache_bytes,
        )

    def warmup(self) -> None:
        """Run edits so that lazy initialisation is not paid by a user's request.

        A small edit first (CUDA context, kernels, the text encoder), then the request a fal
        client sends by default: a ``square_hd`` (1024²) output with one reference at
        ``reference_pixels``. Shape-dependent costs (allocator growth, per-shape kernel and
        primitive set-up) are then paid for the commonest shape before ``/ready``.

        With ``compile_blocks`` two more small edits come between them, another size and then
        another batch: torch.compile recompiles on each with the changed dimension marked
        dynamic (``automatic_dynamic_shapes``), leaving one graph for a single image and one for
        batches of two or more (size-1 dimensions are always specialised), both with a dynamic
        sequence length, which later requests of any size reuse instead of compiling again.
        """
        started = time.perf_counter()
        for request in warmup_requests(
            self.config.reference_pixels,
            compile_blocks=self.config.compile_blocks,
            regimes=self.config.regimes,
            turbo_steps=self.num_steps,
        ):
            self.run([request])
        logger.info("warm-up took %.1f s", time.perf_counter() - started)

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        batch: Sequence[EditRequest],
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[EditResult]:
        for request in batch:
            if request.enable_prompt_expansion and not self.config.allow_prompt_expansion:
                raise InvalidRequest(
                    "prompt expansion is disabled on this server",
                    loc=("body", "enable_prompt_expansion"),
                    input=True,
                )
            self._check_request(request)
        groups: dict[tuple[object, ...], list[int]] = {}
        for index, request in enumerate(batch):  # raises for an unusable reference
            key = request.batch_key(self.config.reference_pixels)
            groups.setdefault(key, []).append(index)
        results: dict[int, EditResult] = {}
        try:
            for indices in groups.values():
                group = [batch[i] for i in indices]
                outcome = self._run_one(group, on_step, should_cancel)
                results.update(zip(indices, outcome, strict=True))
        finally:
            if self.adapters is not None:
                self.adapters.trim()
        return [results[i] for i in range(len(batch))]

    def _run_one(
        self,
        group: list[EditRequest],
        on_step: StepCallback | None,
        should_cancel: CancelCheck | None,
    ) -> list[EditResult]:
        """One sub-batch (one batch key) with its adapters active; errors as ``run`` raises."""
        try:
            self._activate(group[0])
            return self._run_group(group, on_step, should_cancel)
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise OutOfMemory(f"CUDA error: out of memory ({len(group)} requests)") from exc
        except Flux2Error:
            raise
        except Exception as exc:
            logger.exception("FLUX.2 failed on %s", [r.request_id for r in group])
            raise GenerationFailed(f"generation failed: {exc}") from exc

    def _check_request(self, request: EditRequest) -> None:
        """What this engine serves: the regime, its steps, and LoRAs it can apply.

        Raises:
            InvalidRequest: before any model work; a LoRA's problem is reported at
                ``["body", "loras", i, "path"]``.
        """
        check_regime(request, self.config.regimes, self.config.schedule)
        for i, lora in enumerate(request.loras):
            try:
                self.check_lora(lora)
            except InvalidRequest as exc:
                raise InvalidRequest(
                    exc.message, loc=("body", "loras", i, "path"), input=str(lora.path)
                ) from exc

    def _activate(self, request: EditRequest) -> None:
        """The adapters of ``request``'s batch key: the Turbo LoRA for the turbo regime (when it
        is kept unfused), then the request's own LoRAs at their scales; none for plain base."""
        if self.adapters is None:
            return
        pinned: tuple[tuple[str, float], ...] = ()
        if request.regime == "turbo" and self.turbo_mode is TurboMode.ADAPTER:
            pinned = ((TURBO_ADAPTER, self.config.lora_scale),)
        self.adapters.activate(pinned, request.loras)

    def acceleration_of(self, request: EditRequest) -> Acceleration:
        """The acceleration level a request runs at: its own in the base regime; ``regular``
        (the operator's fast paths, no step caching) in the turbo regime."""
        return request.acceleration if request.regime == "base" else "regular"

    @torch.no_grad()
    def _run_group(
        self,
        requests: list[EditRequest],
        on_step: StepCallback | None,
        should_cancel: CancelCheck | None,
    ) -> list[EditResult]:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        work = self._prepare(requests, timings)  # steps 1-6

        # 7. Denoising loop, dropping cancelled requests before every step (all at their
        #    acceleration level: pipelines/acceleration.py).
        mark = time.perf_counter()
        stepped = self._reporter(requests, work, on_step)
        level = self.acceleration_of(requests[0])
        transformer = self.pipe.transformer
        with accelerated(transformer, level, work.steps, self.attention_backend) as cached:
            work.keep_rows = cached
            alive = self._denoise(work, wanted_by(requests, should_cancel), stepped)
        timings["denoise"] = time.perf_counter() - mark
        return self._finish(requests, work, alive, timings, started)  # step 8

    def _prepare(self, requests: list[EditRequest], timings: dict[str, float]) -> Denoising:
        """Steps 1-6: everything before the denoising loop, as batch rows and a schedule."""
        pipe = self.pipe
        device = self._compute_device
        started = time.perf_counter()

        # 1. Reference images: resize to about 1 MP on the 16-pixel grid, then exactly what
        #    Flux2Pipeline.__call__ does to each reference.
        references = [self._resize_references(request) for request in requests]

        # 2. Prompt expansion (caption upsampling with the Mistral text encoder), seeded.
        prompts_used = [
            self._expand(request) if request.enable_prompt_expansion else request.prompt
            for request in requests
        ]
        timings["prompt_expansion"] = time.perf_counter() - started

        # 3. Text embeddings, one prompt at a time, repeated per output image.
        mark = time.perf_counter()
        owners = [i for i, r in enumerate(requests) for _ in range(r.num_images)]
        embeddings = {prompt: self._embed(prompt) for prompt in dict.fromkeys(prompts_used)}
        prompt_embeds = torch.cat([embeddings[prompts_used[i]][0] for i in owners])
        text_ids = torch.cat([embeddings[prompts_used[i]][1] for i in owners])

        # 4. Reference latents, encoded per request and repeated per output image (none for
        #    text-to-image: a batch key holds only one kind).
        image_parts = [
            pipe.prepare_image_latents(
                images=refs,
                batch_size=request.num_images,
                generator=None,
                device=device,
                dtype=pipe.vae.dtype,
            )
            for request, refs in zip(requests, references, strict=True)
            if refs
        ]
        timings["encode"] = time.perf_counter() - mark

        # 5. Noise: one CPU generator per output image, seeded seed + k.
        generators = [
            torch.Generator("cpu").manual_seed(request.seed + k)
            for request in requests
            for k in range(request.num_images)
        ]
        canvas = requests[0].size.generation
        latents, latent_ids = pipe.prepare_latents(
            batch_size=len(owners),
            num_latents_channels=pipe.transformer.config.in_channels // 4,
            height=canvas.height,
            width=canvas.width,
            dtype=prompt_embeds.dtype,
            device=device,
            generator=generators,
        )
        rows = Rows(
            owners=owners,
            latents=latents,
            latent_ids=latent_ids,
            # Text-to-image: no reference tokens, so the transformer sees the target tokens
            # alone, exactly as __call__ without ``image``.
            image_latents=torch.cat([part[0] for part in image_parts])
            if image_parts
            else latents.new_zeros(len(owners), 0, latents.shape[2]),
            image_ids=torch.cat([part[1] for part in image_parts])
            if image_parts
            else latent_ids.new_zeros(len(owners), 0, latent_ids.shape[2]),
            prompt_embeds=prompt_embeds,
            text_ids=text_ids,
            guidance=torch.tensor(
                [requests[i].guidance_scale for i in owners], device=device, dtype=torch.float32
            ),
        )

        # 6. Timesteps. turbo: the flash schedule's sigmas *and* its step count, as the Turbo
        #    recipe passes them; base: __call__'s default sigmas for the request's step count.
        steps, sigmas = sigmas_for(requests[0], self.config.schedule)
        mu = compute_empirical_mu(image_seq_len=latents.shape[1], num_steps=steps)
        work = Denoising(len(requests), rows, steps, sigmas, float(mu), prompts_used)
        self._set_timesteps(work)
        return work

    def _set_timesteps(self, work: Denoising) -> None:
        """Give the scheduler ``work``'s schedule (every rank of a group does the same)."""
        work.timesteps, work.steps = retrieve_timesteps(
            self.pipe.scheduler,
            work.steps,
            self._compute_device,
            sigmas=work.sigmas,
            mu=work.mu,
        )

    def _denoise(
        self,
        work: Denoising,
        decide: Callable[[set[int]], set[int]],
        stepped: Callable[[int, set[int], torch.Tensor], None] | None = None,
    ) -> set[int]:
        """Step 7: the denoising loop; returns the requests still wanted at its end.

        ``decide(alive)`` answers which requests are still wanted before every step and once
        after the last; the rows of the others are dropped at once, and when none is left the
        loop stops (nothing is decoded). ``stepped(i, alive, before)`` follows every step, with
        the latents from before it (for previews).
        """
        pipe = self.pipe
        rows = work.rows
        alive = set(range(work.requests))
        pipe.scheduler.set_begin_index(0)
        for i, t in enumerate(work.timesteps):
            alive = decide(alive)
            if not alive:
                return alive
            if not work.keep_rows:
                rows.keep(alive)
            before = rows.latents
            rows.latents = self._step(pipe, rows, t)
            if stepped is not None:
                stepped(i, alive, before)
        alive = decide(alive)
        if alive:
            rows.keep(alive)
        return alive

    def _finish(
        self,
        requests: list[EditRequest],
        work: Denoising,
        alive: set[int],
        timings: dict[str, float],
        started: float,
    ) -> list[EditResult]:
        """Step 8: decode what is left; one result per request."""
        mark = time.perf_counter()
        images: dict[int, list[Image.Image]] = {i: [] for i in alive}
        if alive:
            for owner, image in zip(
                work.rows.owners, self._decode(self.pipe, work.rows), strict=True
            ):
                images[owner].append(_crop(image, requests[owner].size))
        timings["decode"] = time.perf_counter() - mark
        timings["inference"] = time.perf_counter() - started

        return [
            EditResult(
                request_id=request.request_id,
                images=tuple(images.get(i, ())),
                prompt=work.prompts_used[i],
                seed=request.seed,
                timings=dict(timings),
                cancelled=i not in alive,
            )
            for i, request in enumerate(requests)
        ]

    # -- the steps ---------------------------------------------------------------------------

    def _resize_references(self, request: EditRequest) -> list[torch.Tensor]:
        processor = self.pipe.image_processor
        tensors = []
        for image, size in zip(
            request.images, request.reference_sizes(self.config.reference_pixels), strict=True
        ):
            resized = self.resize_reference(image, size)
            processor.check_image_input(resized)
            tensors.append(
                processor.preprocess(
                    resized, height=size.height, width=size.width, resize_mode="crop"
                )
            )
        return tensors

    @staticmethod
    def resize_reference(image: Image.Image, size: ImageSize) -> Image.Image:
        """The reference exactly as the engine feeds it to the pipeline (RGB, ``size``)."""
        return resize_reference(image, size)

    def _expand(self, request: EditRequest) -> str:
        sizes = request.reference_sizes(self.config.reference_pixels)
        pil_refs = [
            self.resize_reference(im, s) for im, s in zip(request.images, sizes, strict=True)
        ]
        devices = [self._text_device] if self._text_device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(request.seed)
            expanded = self.pipe.upsample_prompt(
                request.prompt,
                images=[pil_refs] if pil_refs else None,  # None: the text-to-image prompt
                temperature=self.config.expansion_temperature,
                device=self._text_device,
            )
        text = expanded[0].strip() if expanded else ""
        return text or request.prompt

    def _embed(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode_prompt`` for one prompt, through the embedding cache."""
        pipe = self.pipe
        key = (
            prompt,
            self.config.max_sequence_length,
            TEXT_ENCODER_LAYERS,
            str(self.config.model_path),
            str(self.dtype),
            str(self.device),
        )
        cached = self.prompt_cache.get(key) if self.config.prompt_cache_bytes else None
        if cached is not None:
            return cached[0], cached[1]
        # On the text encoder's device (the CPU when it is offloaded), then to the GPU: the
        # cache keeps them where the transformer reads them.
        embeds, text_ids = pipe.encode_prompt(
            prompt=prompt,
            device=self._text_device,
            num_images_per_prompt=1,
            max_sequence_length=self.config.max_sequence_length,
            text_encoder_out_layers=TEXT_ENCODER_LAYERS,
        )
        embeds = embeds.to(self._compute_device)
        text_ids = text_ids.to(self._compute_device)
        if self.config.prompt_cache_bytes:
            self.prompt_cache.put(key, (embeds, text_ids))
        return embeds, text_ids

    def _reporter(
        self, requests: Sequence[EditRequest], work: Denoising, on_step: StepCallback | None
    ) -> Callable[[int, set[int], torch.Tensor], None] | None:
        """``on_step`` as :meth:`_denoise` calls it: step ``i`` done, ``alive`` left, with the
        previews due after it (pipelines/previews.py; drawn from ``work``'s rows)."""
        if on_step is None:
            return None
        report = on_step
        listed = list(requests)
        due = preview_plan(listed, work.steps)

        def stepped(i: int, alive: set[int], before: torch.Tensor) -> None:
            shown = self._previews(listed, alive, work.rows, before, i, due) if due else ()
            ids = tuple(listed[j].request_id for j in sorted(alive))
            report(StepEvent(i + 1, work.steps, ids, shown))

        return stepped

    def _previews(
        self,
        requests: list[EditRequest],
        alive: set[int],
        rows: Rows,
        before: torch.Tensor,
        index: int,
        due: dict[int, list[tuple[int, int]]],
    ) -> tuple[Preview, ...]:
        """The previews due after step ``index`` (0-based): the x0 estimate of the first row of
        each request that wants one now, drawn by :func:`pipelines.previews.render`."""
        wanted = [(j, k) for j, k in due.get(index + 1, ()) if j in alive]
        if not wanted:
            return ()
        picked = torch.tensor([rows.owners.index(j) for j, _ in wanted], device=before.device)
        sigmas = self.pipe.scheduler.sigmas
        x0 = previews.x0_estimate(
            before.index_select(0, picked),
            rows.latents.index_select(0, picked),
            float(sigmas[index]),
            float(sigmas[index + 1]),
        )
        total = len(sigmas) - 1
        images = previews.render(
            self.pipe,
            x0,
            rows.latent_ids.index_select(0, picked),
            [requests[j].size for j, _ in wanted],
        )
        return tuple(
            Preview(requests[j].request_id, k, index + 1, total, image)
            for (j, k), image in zip(wanted, images, strict=True)
        )

    @staticmethod
    def _step(pipe: Flux2Pipeline, rows: Rows, t: torch.Tensor) -> torch.Tensor:
        latents = rows.latents
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        model_input = torch.cat([latents, rows.image_latents], dim=1).to(pipe.transformer.dtype)
        noise_pred = pipe.transformer(
            hidden_states=model_input,
            timestep=timestep / 1000,
            guidance=rows.guidance,
            encoder_hidden_states=rows.prompt_embeds,
            txt_ids=rows.text_ids,
            img_ids=torch.cat([rows.latent_ids, rows.image_ids], dim=1),
            joint_attention_kwargs=None,
            return_dict=False,
        )[0]
        noise_pred = noise_pred[:, : latents.size(1) :]
        return pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

    @staticmethod
    def _decode(pipe: Flux2Pipeline, rows: Rows) -> list[Image.Image]:
        latents = pipe._unpack_latents_with_ids(rows.latents, rows.latent_ids)
        bn = pipe.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(
            latents.device, latents.dtype
        )
        latents = pipe._unpatchify_latents(latents * std + mean)
        decoded = pipe.vae.decode(latents, return_dict=False)[0]
        images: list[Image.Image] = pipe.image_processor.postprocess(decoded, output_type="pil")
        return images


def _crop(image: Image.Image, size: ImageSize) -> Image.Image:
    """Centre-crop the 16-pixel-grid canvas to the exact size asked for."""
    if image.size == (size.width, size.height):
        return image
    left = (image.width - size.width) // 2
    top = (image.height - size.height) // 2
    return image.crop((left, top, left + size.width, top + size.height))


def warmup_shapes(
    reference_pixels: int, *, compile_blocks: bool = False
) -> list[tuple[int, int, int]]:
    """The warm-up edits, as (output side, reference side, images): a small one, the extra
    shapes regional compilation needs, then fal's default request (1024², one reference of
    about ``reference_pixels``)."""
    shapes = [(64, 64, 1)]
    if compile_blocks:
        shapes += [(96, 96, 1), (64, 64, 2)]
    reference_side = max(64, math.isqrt(reference_pixels) // 16 * 16)
    default = PRESETS[DEFAULT_PRESET]  # square_hd, 1024x1024
    shapes.append((default.width, reference_side, 1))
    return shapes


def warmup_requests(
    reference_pixels: int,
    *,
    compile_blocks: bool = False,
    regimes: Collection[Regime] = frozenset({"turbo"}),
    turbo_steps: int = 8,
) -> list[EditRequest]:
    """The edits :meth:`Flux2Engine.warmup` runs, one per :func:`warmup_shapes` entry: in the
    turbo regime, or, on a server of the base regime alone, base edits of as few steps."""
    turbo = "turbo" in regimes
    return [
        EditRequest(
            request_id="warmup",
            prompt="warm up",
            images=(Image.new("RGB", (reference_side, reference_side), (128, 128, 128)),),
            size=ImageSize(output, output),
            seed=0,
            num_images=num_images,
            regime="turbo" if turbo else "base",
            steps=None if turbo else turbo_steps,
        )
        for output, reference_side, num_images in warmup_shapes(
            reference_pixels, compile_blocks=compile_blocks
        )
    ]


def _fuse_lora(pipe: Flux2Pipeline, path: Path, scale: float) -> None:
    if not path.is_file():
        raise WeightsError(f"LoRA file {path} does not exist")
    # diffusers unpickles any weight_name not ending in .safetensors, use_safetensors or not.
    if path.suffix != ".safetensors":
        raise WeightsError(f"LoRA file {path} is not a .safetensors file; only those are loaded")
    try:
        pipe.load_lora_weights(
            str(path.parent), weight_name=path.name, adapter_name="flash", use_safetensors=True
        )
        pipe.fuse_lora(lora_scale=scale, adapter_names=["flash"])
        pipe.unload_lora_weights()
    except Exception as exc:
        raise WeightsError(f"cannot fuse LoRA {path}: {exc}") from exc
    logger.info("fused LoRA %s (scale %s)", path, scale)


def _trim_text_encoder(text_encoder: Any, keep_layers: int) -> None:
    """Drop what prompt encoding never reads: decoder layers past ``keep_layers``, the
    ``lm_head`` (its logits are computed but unused), the vision tower and the projector.

    ``hidden_states[10, 20, 30]`` stay bit-identical (§2.8 of the diffusers notes); prompt
    expansion (``generate``) no longer works, so the engine refuses it.
    """
    model = text_encoder.model
    language_model = model.language_model
    if len(language_model.layers) > keep_layers:
        language_model.layers = language_model.layers[:keep_layers]
        language_model.config.num_hidden_layers = keep_layers
    text_encoder.lm_head = torch.nn.Identity()
    model.vision_tower = None
    model.multi_modal_projector = None
    logger.info("text encoder trimmed to %d decoder layers, no lm_head or vision", keep_layers)


def _fuse_qkv(transformer: Any) -> None:
    """``fuse_qkv_projections()``, then free the unfused copies it leaves behind.

    diffusers keeps ``to_q/to_k/to_v`` (and ``add_*_proj``) next to the fused ``to_qkv`` /
    ``to_added_qkv``, which would cost FLUX.2 [dev] about 3.6 GB more. Once fused, the forward
    reads only the fused layers, so the originals are deleted (the engine never unfuses).
    """
    transformer.fuse_qkv_projections()
    for module in transformer.modules():
        if not getattr(module, "fused_projections", False):
            continue
        names = ["to_q", "to_k", "to_v"] if hasattr(module, "to_qkv") else []
        if hasattr(module, "to_added_qkv"):
            names += ["add_q_proj", "add_k_proj", "add_v_proj"]
        for name in names:
            delattr(module, name)
    logger.info("fused the QKV projections")


def _check_quantize(quantize: str | None, device: torch.device) -> None:
    if quantize is None:
        return
    if quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"unknown quantize {quantize!r}: use {', '.join(QUANTIZE_CHOICES)}")
    if device.type != "cuda":
        raise ConfigError(
            f"quantize=fp8 needs a CUDA GPU with compute capability >= 8.9 (Ada, Hopper, "
            f"Blackwell); this engine runs on {device}"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        raise ConfigError(
            f"quantize=fp8 needs compute capability >= 8.9; {device} has "
            f"{capability[0]}.{capability[1]}"
        )
    try:
        importlib.import_module("torchao.quantization")
    except ImportError as exc:
        raise ConfigError(f"quantize=fp8 needs torchao (pip install torchao): {exc}") from exc


def _quantize_fp8(transformer: Any, device: torch.device) -> None:
    """Linear weights to float8 e4m3 with one scale per row, activations quantized on the fly.

    torchao quantizes on the GPU (``device``); the transformer ends up there.
    """
    quantization = importlib.import_module("torchao.quantization")
    config = quantization.Float8DynamicActivationFloat8WeightConfig(
        granularity=quantization.PerRow()
    )
    quantization.quantize_(transformer, config, device=device)
    logger.info("transformer linear weights quantized to fp8 (torchao, per row)")


def available_attention_backends(device: torch.device) -> list[str]:
    """The diffusers attention backends whose requirements are met for ``device``."""
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _check_attention_backend_requirements,
    )

    names = []
    for backend in AttentionBackendName:
        if device.type != "cuda" and backend.value not in CPU_ATTENTION_BACKENDS:
            continue
        try:
            _check_attention_backend_requirements(backend)
        except Exception:  # "not installed", in any form, means "not available"
            continue
        names.append(backend.value)
    return names


def _needs_half_precision(name: str) -> bool:
    """FlashAttention (every flavour, SDPA's included), SageAttention and AITER take fp16/bf16."""
    return any(word in name for word in ("flash", "sage", "aiter"))


def _check_attention_backend(name: str, device: torch.device, dtype: torch.dtype) -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName

    known = {backend.value for backend in AttentionBackendName}
    available = available_attention_backends(device)
    if name not in known:
        raise ConfigError(
            f"unknown attention_backend {name!r}; available here: {', '.join(available)}"
        )
    if name not in available:
        raise ConfigError(
            f"attention_backend {name!r} is not available on {device} (package missing, or not "
            f"a {device.type} backend); available here: {', '.join(available)}"
        )
    if _needs_half_precision(name) and dtype not in (torch.bfloat16, torch.float16):
        raise ConfigError(
            f"attention_backend {name!r} needs dtype bfloat16 or float16, not "
            f"{str(dtype).removeprefix('torch.')}"
        )


def _set_attention_backend(transformer: Any, name: str, device: torch.device) -> None:
    """``set_attention_backend``; hub kernels (``*_hub``) are fetched then, from the local hub
    cache when offline."""
    try:
        transformer.set_attention_backend(name)
    except Exception as exc:
        raise ConfigError(
            f"cannot use attention_backend {name!r}: {exc}; available here: "
            f"{', '.join(available_attention_backends(device))}"
        ) from exc
    logger.info("attention backend: %s", name)


def _choose_attention_backend(
    transformer: Any,
    device: torch.device,
    dtype: torch.dtype,
    only: Collection[str] | None = None,
) -> str:
    """``attention_backend=auto``: the first of FlashAttention 3 (Hopper: the local build, then
    the hub kernel), FlashAttention 2 and ``native`` that is installed and loads (and is in
    ``only``, when given: context parallelism needs a backend that supports it)."""
    wanted = []
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        if torch.cuda.get_device_capability(device)[0] == 9:
            wanted += ["_flash_3", "_flash_3_hub"]
        wanted.append("flash")
    available = set(available_attention_backends(device))
    for name in [*wanted, "native"]:
        if name not in available or (only is not None and name not in only):
            continue
        try:
            transformer.set_attention_backend(name)
        except Exception as exc:  # e.g. a hub kernel that is not cached while offline
            logger.info("attention backend %s did not load (%s); trying the next", name, exc)
            continue
        logger.info("attention backend (auto): %s", name)
        return name
    raise ConfigError("no attention backend loads here, not even 'native'")


def quiet_libraries() -> None:
    """Silence diffusers' loading bars and transformers' chatter; our logs say what matters."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WeightsError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def _resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise WeightsError(f"unknown dtype {name!r}: use auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


__all__ = [
    "Flux2Engine",
    "Flux2EngineConfig",
    "available_attention_backends",
    "quiet_libraries",
    "warmup_requests",
    "warmup_shapes",
]
