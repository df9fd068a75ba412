"""The one settings object: every option, read once from ``FLUX2_*`` variables and the CLI.

Build it once in the command's ``main`` (``Settings()`` reads the environment; the CLI passes its
options as keyword arguments, which win) and pass it down. No other module reads ``os.environ``.

Options are grouped by the component that takes them whole (``settings.engine``,
``settings.queue``, ``settings.http``, ...); each group reads its own ``FLUX2_<NAME>`` variables,
so the variable of every option is ``FLUX2_`` plus its field name, whatever its group. Keyword
arguments may name a group (``Settings(engine=EngineSettings(...))``) or a field of any group
(``Settings(model="tiny", port=9000)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import ConfigError
from pipelines.layout import check_group, parse_gpus, parse_layout
from pipelines.options import (
    DEVICE_PATTERN,
    AttentionBackend,
    DType,
    MemoryProfileName,
    Quantize,
    SafetyCheckerName,
)
from pipelines.schedules import DEFAULT_SCHEDULE, parse_schedule
from pipelines.sizes import REFERENCE_PIXELS

if TYPE_CHECKING:
    from service.endpoints import Endpoint


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "flux2-edit"


class _Group(BaseSettings):
    """A group of settings, each read from ``FLUX2_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FLUX2_", extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_means_unset(cls, data: Any) -> Any:
        """``FLUX2_REDIS_URL=`` (as compose files write an unset variable) means "not set" for
        the settings that can be unset; other settings keep the empty string."""
        if isinstance(data, dict):
            optional = {name for name, f in cls.model_fields.items() if f.default is None}
            return {k: None if v == "" and k in optional else v for k, v in data.items()}
        return data


class EngineSettings(_Group):
    """The model and how it runs (``flux2-edit serve``, ``worker`` and ``edit``)."""

    model: str | None = Field(
        default=None,
        description="A local FLUX.2 checkpoint directory (diffusers layout), or 'tiny' for the "
        "offline random-weight test checkpoint (built once into cache_dir).",
    )
    device: str = Field(
        default="auto",
        pattern=DEVICE_PATTERN,
        description="auto (CUDA if available, else CPU), cpu, cuda or cuda:N.",
    )
    dtype: DType = Field(default="auto", description="auto = bfloat16 on CUDA, float32 on CPU.")
    lora_path: Path | None = Field(
        default=None,
        description="The Turbo LoRA (flux.2-turbo-lora.safetensors) of the flash/turbo "
        "endpoints; unset: the one 'flux2-edit weights download' put beside the model. Fused "
        "when only those endpoints are served, else switched on per batch.",
    )
    lora_scale: float = Field(default=1.0, description="Weight of the Turbo LoRA.")
    schedule: str = Field(
        default=DEFAULT_SCHEDULE,
        description="Flash step schedule: a name (turbo, dev-28, dev-50) or sigmas like 1,0.5,0.1",
    )
    reference_pixels: int = Field(
        default=REFERENCE_PIXELS,
        ge=64 * 64,
        le=2048 * 2048,
        description="Reference images are resized to about this many pixels (fal: 1 MP).",
    )
    prompt_cache_mb: int = Field(
        default=512,
        ge=0,
        description="Memory for cached prompt embeddings (about 16 MB per prompt for the real "
        "model); 0 turns the cache off.",
    )
    adapter_cache_mb: int = Field(
        default=2048,
        ge=0,
        description="GPU memory for request LoRAs kept loaded (least recently used out first); "
        "a batch's own adapters always load. 0 unloads them after each batch.",
    )
    memory_profile: MemoryProfileName = Field(
        default="auto",
        description="Where the weights live: auto (planned from the GPU's free memory), "
        "resident (all on the GPU, ~113 GB bf16), offload_text_encoder (text encoder on the "
        "CPU behind the prompt cache), model_offload (each model moved to the GPU while it "
        "runs) or cpu. A profile that does not fit still applies, with a warning.",
    )
    attention_backend: AttentionBackend | None = Field(
        default=None,
        description="diffusers attention backend (native, flash, _flash_3, _flash_3_hub, "
        "...), or auto: the best one installed (FlashAttention 3 on Hopper, then 2, then "
        "native). Unset: PyTorch SDPA.",
    )
    fuse_qkv: bool = Field(
        default=False, description="Fuse the transformer's Q/K/V projections (GPU fast path)."
    )
    compile_blocks: bool = Field(
        default=False,
        description="torch.compile the repeated transformer blocks at start (warm-up compiles "
        "for a few minutes; GPU fast path).",
    )
    quantize: Quantize | None = Field(
        default=None,
        description="fp8: transformer linear weights in float8 via torchao (pip install "
        "'flux2-edit[fp8]'; CUDA compute capability >= 8.9). Unset: dtype.",
    )
    allow_prompt_expansion: bool = Field(
        default=True,
        description="false: requests with enable_prompt_expansion get 422, and the text "
        "encoder is trimmed to the 31 layers prompt encoding reads (48 -> 36 GB).",
    )
    warmup: bool = Field(
        default=True,
        description="Run warm-up edits (a small one, then fal's default 1024² request) before "
        "reporting ready, so the first request does not pay for lazy initialisation; false "
        "starts faster (development, tests).",
    )

    parallel: str | None = Field(
        default=None,
        description="Split each request over several GPUs (one process per rank): ulysses:N "
        "(sequence parallel, every GPU holds the transformer) or tp:N (tensor parallel, each "
        "GPU holds ~1/N of it); none or unset = one process. On the CPU the ranks use gloo.",
    )
    gpus: str | None = Field(
        default=None,
        description="With parallel: the GPUs of the ranks, e.g. 0,1,2,3 (one per rank; "
        "default the first N).",
    )

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        try:
            parse_schedule(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from exc
        return value

    @model_validator(mode="after")
    def _known_group(self) -> EngineSettings:
        try:
            layout = parse_layout(self.parallel)
            check_group(layout, parse_gpus(self.gpus))
        except ConfigError as exc:
            raise ValueError(exc.message) from exc
        if layout is not None and self.device.startswith("cuda:"):
            raise ValueError(f"device={self.device} with parallel: name the GPUs with gpus")
        return self


class SafetySettings(_Group):
    """The NSFW checker the worker runs on references and outputs."""

    safety_checker: SafetyCheckerName = Field(
        default="opennsfw",
        description="NSFW checker for outputs: opennsfw (offline, CPU), hf-image-classifier "
        "(a local model directory in safety_model_dir), or none. If it cannot load, the "
        "server does not start.",
    )
    safety_threshold: float = Field(
        default=0.5, ge=0, le=1, description="Score at which an image is flagged."
    )
    safety_model_dir: Path | None = Field(
        default=None, description="Local model directory for hf-image-classifier."
    )
    safety_check_inputs: bool = Field(
        default=True,
        description="Check the reference images too; a flagged input gives black, flagged "
        "outputs without running the model.",
    )
    allow_disable_safety_checker: bool = Field(
        default=False,
        description="Honour enable_safety_checker=false from requests (fal does so only for "
        "authorised accounts).",
    )


class HttpSettings(_Group):
    """The HTTP server (``serve`` and ``api``): where it listens, who may call it."""

    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the HTTP server binds.")
    ssl_certfile: Path | None = Field(
        default=None, description="TLS certificate (PEM); with ssl_keyfile, serve https."
    )
    ssl_keyfile: Path | None = Field(default=None, description="TLS private key (PEM).")
    public_url: str | None = Field(
        default=None,
        description="Base URL clients reach this server at, used in response_url, status_url "
        "and file URLs. Default: taken from each request (its scheme and Host header).",
    )
    api_keys: str = Field(
        default="",
        description="Comma-separated API keys clients send as 'Authorization: Key <key>' "
        "(plain, or 'sha256:<hex>' digests from 'flux2-edit key'). Empty: no auth, and the "
        "server binds to loopback only unless allow_unauthenticated is set.",
    )
    allow_unauthenticated: bool = Field(
        default=False, description="Allow a non-loopback bind without API keys."
    )
    cors_origins: str = Field(
        default="*", description="Comma-separated origins browsers may call from ('*' = any)."
    )
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest request body (data URIs included); larger ones get 413.",
    )


class QueueSettings(_Group):
    """The job queue: in this process, or on a Redis server shared by API nodes and workers."""

    redis_url: str | None = Field(
        default=None,
        description="Redis server shared by API nodes and workers (redis://host:6379/0); "
        "unset = everything in this process.",
    )
    max_queue_length: int = Field(
        default=1000, ge=1, description="Requests waiting beyond this are answered 429."
    )
    result_ttl_seconds: float = Field(
        default=3600.0, gt=0, description="How long results and their files are kept (fal: 1 h)."
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A running job whose worker stops renewing it for this "
        "long is given to another worker (Redis).",
    )
    max_deliveries: int = Field(
        default=3,
        ge=1,
        description="Times a job may lose its worker (lease lapsed) before it is failed "
        "instead of retried (dead letter).",
    )


class StorageSettings(_Group):
    """Where files live: output images and uploads (local disk, or Redis with a queue on Redis),
    and caches."""

    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Where the tiny checkpoint and other caches live.",
    )
    files_dir: Path | None = Field(
        default=None, description="Where output images are stored (default: cache_dir/files)."
    )

    upload_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs upload URLs and upload tokens (fal storage routes). Set the "
        "same value on every API node sharing a Redis; unset: a random key per process, so an "
        "upload must be finished on the node that started it.",
    )
    upload_max_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1024, description="Largest file a client may upload."
    )
    upload_ttl_seconds: float = Field(
        default=3600.0, gt=0, description="How long uploaded files are kept."
    )

    @property
    def files_root(self) -> Path:
        return self.files_dir if self.files_dir is not None else self.cache_dir / "files"

    @property
    def uploads_root(self) -> Path:
        """Where uploads live on local disk (beside the output images)."""
        return self.files_root.parent / f"{self.files_root.name}-uploads"


class BatchingSettings(_Group):
    """How the worker groups jobs into engine calls."""

    max_batch_images: int = Field(
        default=4, ge=1, description="Most output images one engine call produces."
    )
    batch_window_ms: float = Field(
        default=10.0,
        ge=0,
        description="How long a batch waits for compatible jobs to join while the GPU is idle "
        "(while it is busy, jobs join until it is free, up to max_batch_images).",
    )


class FetchSettings(_Group):
    """Downloads of reference images (the SSRF guard and its limits)."""

    fetch_allow: str = Field(
        default="",
        description="Comma-separated host names and networks (CIDR) image_urls may be fetched "
        "from although they are internal, e.g. 'images.internal,10.20.0.0/16'; '*' turns the "
        "SSRF guard off. By default only public addresses are fetched.",
    )
    fetch_max_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1024, description="Largest image download, in bytes."
    )
    fetch_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Read timeout of one image download."
    )


class EndpointSettings(_Group):
    """Which of the FLUX.2 family's endpoints this server answers (service/endpoints.py)."""

    endpoints: str = Field(
        default="",
        description="Comma-separated endpoint ids to serve, e.g. 'fal-ai/flux-2/flash/edit,"
        "fal-ai/flux-2/flash'; empty or 'all' = every endpoint. Disabled endpoints answer 404; "
        "serving only flash/turbo endpoints lets the engine fuse the Turbo LoRA.",
    )

    @field_validator("endpoints")
    @classmethod
    def _known_endpoints(cls, value: str) -> str:
        from service.endpoints import enabled_endpoints

        try:
            enabled_endpoints(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from exc
        return value

    def enabled(self) -> tuple[Endpoint, ...]:
        """The endpoints served, in the table's order."""
        from service.endpoints import enabled_endpoints

        return enabled_endpoints(self.endpoints)


class LoraSettings(_Group):
    """Per-request LoRAs (``loras`` on the lora endpoints): where names resolve, the download
    cache and its limits."""

    lora_dir: Path | None = Field(
        default=None,
        description="Directory of operator-provided LoRA files: a request's loras[].path may "
        "name one (e.g. 'my-style' or 'my-style.safetensors'); unset = names are refused.",
    )
    lora_cache_dir: Path | None = Field(
        default=None,
        description="Where downloaded LoRA files are kept by content hash "
        "(default: cache_dir/loras).",
    )
    lora_cache_mb: int = Field(
        default=4096,
        ge=1,
        description="Disk space for downloaded LoRA files; the least recently used go first.",
    )
    lora_max_mb: int = Field(
        default=1024, ge=1, description="Largest LoRA file a request may download or name."
    )
    lora_timeout_seconds: float = Field(
        default=120.0, gt=0, description="Read timeout of one LoRA download."
    )
    lora_hf_cache: Path | None = Field(
        default=None,
        description="Hugging Face cache where 'owner/repo' LoRA paths are looked up (never "
        "downloaded); default: huggingface_hub's (HF_HUB_CACHE / HF_HOME).",
    )


class WebhookSettings(_Group):
    """Delivery of ``fal_webhook`` callbacks."""

    webhook_attempts: int = Field(default=6, ge=1, description="Deliveries tried per webhook.")
    webhook_backoff_seconds: float = Field(
        default=2.0, ge=0, description="First retry delay of a webhook; doubles each attempt."
    )
    webhook_allow: str = Field(
        default="",
        description="Comma-separated host names and networks (CIDR) fal_webhook URLs may point "
        "to although they are internal, e.g. 'hooks.internal,10.20.0.0/16'; '*' turns the "
        "check off. By default webhooks go only to public addresses (redirects never followed).",
    )


class ObservabilitySettings(_Group):
    """Logs and metrics."""

    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines as readable text, or one JSON object per line (ts, level, logger, "
        "message, request_id and extra fields) for log collectors.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Logging level."
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="flux2-edit worker: serve Prometheus /metrics on this port (bound to host); "
        "unset = none. serve and api answer /metrics on their own port.",
    )


class Settings(BaseModel):
    """flux2-edit's configuration: every group, each read from ``FLUX2_*`` variables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    GROUPS: ClassVar[dict[str, type[_Group]]] = {}

    engine: EngineSettings = Field(default_factory=EngineSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    serving: EndpointSettings = Field(default_factory=EndpointSettings)
    loras: LoraSettings = Field(default_factory=LoraSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)

    def __init__(self, **options: Any) -> None:
        """Groups by name, or options of any group by field name (see the module docstring)."""
        super().__init__(**options)

    @model_validator(mode="before")
    @classmethod
    def _route_fields(cls, data: Any) -> Any:
        """Each field given by name goes to its group, which reads the environment for the
        rest (keyword arguments win). Unknown names are left for pydantic to refuse."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, group in cls.GROUPS.items():
            given = data.pop(name, None)
            fields = {key: data.pop(key) for key in list(data) if key in group.model_fields}
            if isinstance(given, group) and not fields:
                data[name] = given
                continue
            if isinstance(given, BaseModel):
                given = given.model_dump(exclude_unset=True)
            data[name] = group(**{**(given or {}), **fields})
        return data

    def option(self, name: str) -> Any:
        """The value of the option ``name`` (a field name of any group)."""
        for group in self.GROUPS:
            values = getattr(self, group)
            if name in type(values).model_fields:
                return getattr(values, name)
        raise KeyError(name)

    @classmethod
    def option_names(cls) -> list[str]:
        """Every option's field name (its variable is ``FLUX2_`` + the name upper-cased)."""
        return [name for group in cls.GROUPS.values() for name in group.model_fields]


Settings.GROUPS = {
    name: field.annotation  # type: ignore[misc]
    for name, field in Settings.model_fields.items()
}
