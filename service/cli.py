"""The ``flux2-edit`` command line.

Every option has a ``FLUX2_*`` environment variable (see :class:`service.settings.Settings`); an
option given on the command line wins. Heavy imports (torch, diffusers) happen only inside the
commands that need a model.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.errors import ConfigError, Flux2Error, InvalidRequest
from service.settings import Settings

logger = logging.getLogger("flux2-edit")

# argparse dest -> Settings field, for the options that are settings.
_SETTINGS_OPTIONS = {
    "model": "model",
    "device": "device",
    "dtype": "dtype",
    "lora": "lora_path",
    "lora_scale": "lora_scale",
    "schedule": "schedule",
    "reference_pixels": "reference_pixels",
    "cache_dir": "cache_dir",
    "parallel": "parallel",
    "gpus": "gpus",
    "host": "host",
    "port": "port",
    "ssl_certfile": "ssl_certfile",
    "ssl_keyfile": "ssl_keyfile",
    "public_url": "public_url",
    "redis_url": "redis_url",
}


def _model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (each also FLUX2_<NAME>)")
    group.add_argument("--model", help="checkpoint directory, or 'tiny' (FLUX2_MODEL)")
    group.add_argument("--device", help="auto, cpu, cuda or cuda:N (FLUX2_DEVICE)")
    group.add_argument("--dtype", help="auto, float32, bfloat16 or float16 (FLUX2_DTYPE)")
    group.add_argument("--lora", help="the Turbo LoRA (FLUX2_LORA_PATH; default: beside the model)")
    group.add_argument("--lora-scale", type=float, help="weight of the LoRA (FLUX2_LORA_SCALE)")
    group.add_argument("--schedule", help="turbo, dev-28, dev-50 or sigmas (FLUX2_SCHEDULE)")
    group.add_argument("--reference-pixels", type=int, help="reference images resized to ~N pixels")
    group.add_argument("--cache-dir", help="where the tiny checkpoint is built (FLUX2_CACHE_DIR)")
    group.add_argument(
        "--parallel", help="one request over N GPUs: ulysses:N, tp:N or none (FLUX2_PARALLEL)"
    )
    group.add_argument("--gpus", help="the ranks' GPUs with --parallel, e.g. 0,1 (FLUX2_GPUS)")


def _http_options(parser: argparse.ArgumentParser, *, redis_required: bool = False) -> None:
    parser.add_argument("--host", help="bind address (FLUX2_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (FLUX2_PORT, default 8000)")
    parser.add_argument(
        "--redis-url",
        help="Redis server shared with workers (FLUX2_REDIS_URL)"
        + ("" if redis_required else "; unset = all in this process"),
    )
    parser.add_argument("--ssl-certfile", help="TLS certificate: serve https (FLUX2_SSL_CERTFILE)")
    parser.add_argument("--ssl-keyfile", help="TLS private key (FLUX2_SSL_KEYFILE)")
    parser.add_argument(
        "--public-url", help="base URL clients use, for response and file URLs (FLUX2_PUBLIC_URL)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flux2-edit",
        description="Self-hosted FLUX.2 [dev] image editing with a fal.ai-compatible API.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="all-in-one: the fal-compatible API plus an in-process GPU worker"
    )
    _http_options(serve)
    _model_options(serve)
    serve.set_defaults(handler=_cmd_serve)

    api = commands.add_parser("api", help="API node only (no model); workers share --redis-url")
    _http_options(api, redis_required=True)
    api.set_defaults(handler=_cmd_api)

    worker = commands.add_parser("worker", help="GPU worker only, taking jobs from --redis-url")
    worker.add_argument("--redis-url", help="Redis server (FLUX2_REDIS_URL)")
    _model_options(worker)
    worker.set_defaults(handler=_cmd_worker)

    key = commands.add_parser(
        "key", help="make a new API key and its hashed form for FLUX2_API_KEYS"
    )
    key.set_defaults(handler=_cmd_key)

    cert = commands.add_parser(
        "cert", help="write a local CA (ca.pem) and a cert.pem + key.pem for 127.0.0.1/localhost"
    )
    cert.add_argument("--out", type=Path, default=Path("certs"), help="folder (./certs)")
    cert.set_defaults(handler=_cmd_cert)

    edit = commands.add_parser("edit", help="one-shot local edit with a progress bar, no server")
    edit.add_argument(
        "--image", action="append", required=True, help="PATH or URL; repeat for up to 4"
    )
    edit.add_argument("--prompt", required=True, help="what to change, e.g. 'make it #FF5733'")
    edit.add_argument(
        "--out", default="out.png", help="output file; .png, .jpg/.jpeg or .webp (out.png)"
    )
    edit.add_argument("--seed", type=int, help="random seed (random when left out)")
    edit.add_argument(
        "--image-size", default="square_hd", help="a fal preset or WIDTHxHEIGHT (square_hd)"
    )
    edit.add_argument("--num-images", type=int, default=1, help="1..4 images (1)")
    edit.add_argument("--guidance-scale", type=float, help="0..20 (the schedule's default)")
    edit.add_argument(
        "--expand-prompt", action="store_true", help="expand the prompt with the text encoder"
    )
    _model_options(edit)
    edit.set_defaults(handler=_cmd_edit)

    weights = commands.add_parser("weights", help="build, download or verify checkpoints")
    weight_commands = weights.add_subparsers(dest="weights_command", required=True)
    tiny = weight_commands.add_parser(
        "tiny", help="build the tiny random-weight FLUX.2 checkpoint offline"
    )
    tiny.add_argument("dir", type=Path)
    tiny.set_defaults(handler=_cmd_weights_tiny)
    download = weight_commands.add_parser(
        "download", help="fetch FLUX.2 [dev] and the Turbo LoRA (needs network and HF_TOKEN)"
    )
    download.add_argument("--dest", type=Path, default=Path("models"), help="(./models)")
    download.add_argument("--no-lora", action="store_true", help="skip the Turbo LoRA")
    download.set_defaults(handler=_cmd_weights_download)
    verify = weight_commands.add_parser("verify", help="check a checkpoint against the manifest")
    verify.add_argument("dir", type=Path)
    verify.set_defaults(handler=_cmd_weights_verify)

    from service.loadtest.cli import add_loadtest_parser

    add_loadtest_parser(commands)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the options given on the command line."""
    overrides: dict[str, Any] = {
        field: getattr(args, dest)
        for dest, field in _SETTINGS_OPTIONS.items()
        if getattr(args, dest, None) is not None
    }
    return Settings(**overrides)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- commands --------------------------------------------------------------------------------


def _cmd_edit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipelines.schedules import parse_schedule
    from pipelines.sizes import parse_image_size
    from pipelines.types import EditRequest
    from pipelines.validation import validate_request
    from service.engines import create_engine
    from service.inputs import FetchPolicy, load_image
    from service.outputs import OutputFormat, encode_image

    settings = settings_from_args(args)
    out = Path(args.out)
    try:
        fmt = OutputFormat.from_suffix(out.suffix)
    except ValueError:
        raise InvalidRequest(
            f"--out {out}: use a .png, .jpg, .jpeg or .webp file name", loc=("out",)
        ) from None
    size = parse_image_size(args.image_size)
    images = tuple(
        load_image(source, index=i, allow_local=True, policy=FetchPolicy(allow_all=True))
        for i, source in enumerate(args.image)
    )
    engine = create_engine(settings, progress=_say)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    guidance = args.guidance_scale
    if guidance is None:
        guidance = parse_schedule(settings.engine.schedule).default_guidance
    request = EditRequest(
        request_id="cli",
        prompt=args.prompt,
        images=images,
        size=size,
        seed=seed,
        num_images=args.num_images,
        guidance_scale=guidance,
        enable_prompt_expansion=args.expand_prompt,
    )
    validate_request(request, target_pixels=settings.engine.reference_pixels)
    with tqdm(total=engine.num_steps, desc="denoising", unit="step", file=sys.stderr) as bar:
        (result,) = engine.run([request], on_step=lambda event: bar.update(1))
    written = []
    for k, image in enumerate(result.images):
        path = out if len(result.images) == 1 else out.with_name(f"{out.stem}-{k}{out.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_image(image, fmt))
        written.append(path)
    for path in written:
        print(path)
    _say(
        f"seed {seed}, {result.timings.get('inference', 0.0):.2f} s"
        + (f", prompt: {result.prompt}" if args.expand_prompt else "")
    )
    return 0


def _check_model(settings: Settings) -> None:
    model = settings.engine.model
    if model is None:
        raise ConfigError("no model given: pass --model PATH|tiny or set FLUX2_MODEL")
    if model != "tiny" and not (Path(model) / "model_index.json").is_file():
        raise ConfigError(
            f"--model {model}: not a FLUX.2 checkpoint directory (no model_index.json); "
            "use 'tiny', or fetch the weights with 'flux2-edit weights download'"
        )


def _check_exposure(settings: Settings) -> None:
    """Without API keys, only this machine may call us, unless the operator says otherwise."""
    import ipaddress

    from service.auth import ApiKeys

    http = settings.http
    if ApiKeys(http.api_keys).enabled or http.allow_unauthenticated:
        return
    host = http.host.strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ConfigError(
            f"refusing to serve on {http.host} without API keys: set FLUX2_API_KEYS "
            "(see 'flux2-edit key'), bind 127.0.0.1, or set FLUX2_ALLOW_UNAUTHENTICATED=true"
        )


def _serve_http(settings: Settings, *, with_worker: bool) -> int:
    import uvicorn

    from service.bootstrap import Role, build, build_app
    from service.logs import setup_logging

    http = settings.http
    if (http.ssl_certfile is None) != (http.ssl_keyfile is None):
        raise ConfigError("--ssl-certfile and --ssl-keyfile go together")
    if with_worker:
        _check_model(settings)
    _check_exposure(settings)
    logs = settings.observability
    setup_logging(logs.log_level, json=logs.log_format == "json")
    app = build_app(build(settings, Role.SERVE if with_worker else Role.API))
    scheme = "https" if http.ssl_certfile else "http"
    _say(
        f"flux2-edit: serving on {scheme}://{http.host}:{http.port}"
        + (" (model loading…)" if with_worker else " (API node; workers on Redis)")
    )
    uvicorn.run(
        app,
        host=http.host,
        port=http.port,
        ssl_certfile=str(http.ssl_certfile) if http.ssl_certfile else None,
        ssl_keyfile=str(http.ssl_keyfile) if http.ssl_keyfile else None,
        log_level=logs.log_level,
        log_config=None,  # uvicorn's lines go through our handler (text or JSON)
        access_log=False,  # the metrics middleware writes one line per request, with its id
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    return _serve_http(settings_from_args(args), with_worker=True)


def _require_redis(settings: Settings, command: str) -> None:
    if not settings.queue.redis_url:
        raise ConfigError(f"flux2-edit {command} needs --redis-url (or FLUX2_REDIS_URL)")


def _cmd_api(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    _require_redis(settings, "api")
    return _serve_http(settings, with_worker=False)


def _cmd_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from service.bootstrap import Role, build
    from service.logs import setup_logging

    settings = settings_from_args(args)
    _require_redis(settings, "worker")
    _check_model(settings)
    logs = settings.observability
    setup_logging(logs.log_level, json=logs.log_format == "json")
    components = build(settings, Role.WORKER)
    worker = components.worker
    assert worker is not None
    if logs.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(
            logs.metrics_port, addr=settings.http.host, registry=components.metrics.registry
        )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    worker.start()
    _say(f"flux2-edit: worker taking jobs from {settings.queue.redis_url} (model loading…)")
    while not stop.wait(1.0):
        if worker.state.value in ("setup_failed", "defunct"):
            _say(f"flux2-edit: worker {worker.state.value}: {worker.error}")
            worker.stop()
            return 1
    _say("flux2-edit: draining (finishing the running batch, releasing the rest)")
    worker.stop()
    components.close()
    return 0


def _cmd_key(args: argparse.Namespace) -> int:
    from service.auth import new_key

    key, stored = new_key()
    print(f"key (give it to clients as FAL_KEY): {key}")
    print(f"hashed (put it in FLUX2_API_KEYS):   {stored}")
    return 0


def _cmd_cert(args: argparse.Namespace) -> int:
    from service.tls import write_local_certificates

    files = write_local_certificates(args.out)
    for path in (files.ca, files.cert, files.key):
        print(path)
    _say(
        f"serve with --ssl-certfile {files.cert} --ssl-keyfile {files.key}; clients trust "
        f"{files.ca} (SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, curl --cacert)"
    )
    return 0


def _cmd_weights_tiny(args: argparse.Namespace) -> int:
    from weights.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint(args.dir, progress=_say)
    print(path)
    return 0


def _cmd_weights_download(args: argparse.Namespace) -> int:
    from weights.download import download

    path = download(args.dest, include_lora=not args.no_lora, progress=_say)
    print(path)
    return 0


def _cmd_weights_verify(args: argparse.Namespace) -> int:
    from weights.verify import verify

    report = verify(args.dir)
    print(report.render())
    return 0 if report.ok else 1


# -- entry point -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from service.logs import setup_logging

    setup_logging(logging.DEBUG if args.verbose else logging.WARNING)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            _say(f"flux2-edit: invalid setting {where}: {error['msg']}")
        return 2
    except InvalidRequest as exc:
        for problem in exc.problems:
            where = ".".join(str(part) for part in problem.loc if part != "body")
            _say(f"flux2-edit: {where}: {problem.msg}" if where else f"flux2-edit: {problem.msg}")
        return 2
    except Flux2Error as exc:
        _say(f"flux2-edit: {exc.message}")
        return 1
    except KeyboardInterrupt:
        _say("flux2-edit: interrupted")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
