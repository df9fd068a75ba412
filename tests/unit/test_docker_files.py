"""Dockerfile.cuda, docker-compose.yml and .dockerignore, checked without a Docker engine.

Every path they copy exists and is not ignored, every command parses with the real CLI parser,
every ``FLUX2_*`` variable is a setting (and its value validates), the healthcheck asks a real
route and works against the app, the image runs as a non-root user and holds no weights.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml  # type: ignore[import-untyped]  # no stubs installed
from starlette.testclient import TestClient

from service.app import create_app
from service.cli import build_parser
from service.queue.memory import InMemoryJobQueue
from service.settings import HttpSettings, Settings
from service.storage.local import LocalArtifactStore

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.cuda"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".ckpt", ".pt", ".pth", ".bin")

Instruction = tuple[str, str]


def instructions(text: str) -> list[Instruction]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    result: list[Instruction] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        result.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return result


def arguments(value: str) -> list[str]:
    """An instruction's arguments: the JSON (exec) form, or shell words."""
    if value.startswith("["):
        parsed = json.loads(value)
        assert isinstance(parsed, list) and all(isinstance(v, str) for v in parsed)
        return parsed
    return shlex.split(value)


def env_pairs(value: str) -> dict[str, str]:
    pairs = {}
    for word in shlex.split(value):
        key, sep, val = word.partition("=")
        assert sep, f"ENV {word!r}: use the KEY=value form"
        pairs[key] = val
    return pairs


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return instructions(DOCKERFILE.read_text())


def only(found: list[Instruction], keyword: str) -> list[str]:
    return [rest for key, rest in found if key == keyword]


def last(found: list[Instruction], keyword: str) -> str:
    values = only(found, keyword)
    assert values, f"no {keyword} in Dockerfile.cuda"
    return values[-1]


def image_env(found: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in only(found, "ENV"):
        env.update(env_pairs(value))
    return env


def check_flux2_variables(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every FLUX2_* name is a setting, and together they make valid settings."""
    fields = Settings.option_names()
    for key in env:
        if key.startswith("FLUX2_"):
            assert key.removeprefix("FLUX2_").lower() in fields, f"{key} is not a setting"
    for key in [k for k in os.environ if k.startswith("FLUX2_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("FLUX2_"):
            monkeypatch.setenv(key, value)
    Settings()


# -- .dockerignore ---------------------------------------------------------------------------


def ignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def ignored(path: str) -> bool:
    """Whether the build context leaves out ``path`` (or a folder above it); no ``!`` rules."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in ignore_patterns():
        assert not pattern.startswith("!"), "exceptions are not modelled by this test"
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(Path(prefix).name, bare)
            ):
                return True
    return False


def test_dockerignore_keeps_out_environments_caches_and_weights() -> None:
    for path in (".venv", ".git", ".pytest_cache", ".mypy_cache", "node_modules", "models"):
        assert ignored(path), path
    assert ignored("service/__pycache__/app.cpython-312.pyc")
    assert ignored("models/FLUX.2-dev/transformer/model.safetensors")
    assert ignored("anywhere/lora.safetensors")
    assert not ignored("service/app.py")
    assert not ignored("weights/manifest.json")  # the manifest package, not weights


# -- Dockerfile.cuda -------------------------------------------------------------------------


def test_base_is_a_cuda_runtime_image(dockerfile: list[Instruction]) -> None:
    base = last(dockerfile, "FROM")
    args = {k: v for value in only(dockerfile, "ARG") for k, v in env_pairs(value).items()}
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert base.startswith("nvidia/cuda:")
    assert "-runtime-" in base
    assert len(only(dockerfile, "FROM")) == 1


def test_every_copy_source_exists_and_reaches_the_build(dockerfile: list[Instruction]) -> None:
    copies = [arguments(value) for value in only(dockerfile, "COPY")]
    assert copies
    sources = [src for words in copies for src in words[:-1] if not src.startswith("--")]
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        assert not ignored(source), f"COPY {source}: .dockerignore leaves it out"
        assert Path(source).parts[0] not in ("models", "outputs"), f"COPY {source}: weights"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        heavy = [p for p in files if p.suffix in WEIGHT_SUFFIXES and not ignored(str(p))]
        assert not heavy, f"COPY {source} would bake weights into the image: {heavy}"
    assert {"pyproject.toml", "README.md"} <= set(sources)
    for package in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]:
        assert package.rstrip("*") in sources, f"package {package} is not copied"


def test_dependencies_come_from_the_hashed_runtime_lock(dockerfile: list[Instruction]) -> None:
    """Every pip install in the image installs what requirements/runtime.txt pins, hash-checked,
    and nothing else (--no-deps everywhere; the project builds without fetching a backend)."""
    commands = [
        shlex.split(command)
        for value in only(dockerfile, "RUN")
        for command in value.split("&&")
        if "pip install" in command
    ]
    assert len(commands) == 2, commands
    assert all("--no-deps" in words for words in commands), commands
    locked, project = commands
    assert "--require-hashes" in locked
    assert locked[locked.index("-r") + 1] == "requirements/runtime.txt"
    assert "--no-build-isolation" in project
    assert project[-1] == "/src"
    copied = [arguments(value)[:-1] for value in only(dockerfile, "COPY")]
    assert ["requirements/runtime.txt"] in copied
    keywords = [(key, value) for key, value in dockerfile if key in ("COPY", "RUN")]
    lock_copy = next(i for i, (k, v) in enumerate(keywords) if "requirements/runtime.txt" in v)
    lock_install = next(i for i, (k, v) in enumerate(keywords) if "--require-hashes" in v)
    assert lock_copy < lock_install


def test_no_weights_are_fetched_or_baked(dockerfile: list[Instruction]) -> None:
    for value in only(dockerfile, "RUN"):
        assert "weights download" not in value
        assert "huggingface" not in value.lower()
    assert "/models" in arguments(last(dockerfile, "VOLUME"))
    assert image_env(dockerfile)["FLUX2_MODEL"].startswith("/models/")


def test_runs_as_a_non_root_user(dockerfile: list[Instruction]) -> None:
    user = last(dockerfile, "USER").split(":")[0]
    assert user not in ("root", "0")
    assert any("useradd" in value and user in value.split() for value in only(dockerfile, "RUN"))
    keywords = [key for key, _ in dockerfile]
    after_user = keywords[keywords.index("USER") :]
    assert "RUN" not in after_user, "nothing should be installed as the runtime user"


def test_entrypoint_and_command_are_cli_commands(dockerfile: list[Instruction]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert arguments(last(dockerfile, "ENTRYPOINT")) == ["flux2-edit"]
    assert "flux2-edit" in scripts
    args = build_parser().parse_args(arguments(last(dockerfile, "CMD")))
    assert args.command == "serve"


def test_image_variables_are_settings(
    dockerfile: list[Instruction], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = image_env(dockerfile)
    assert env["FLUX2_HOST"] == "0.0.0.0"
    check_flux2_variables(env, monkeypatch)
    port = env.get("FLUX2_PORT", str(HttpSettings.model_fields["port"].default))
    assert arguments(last(dockerfile, "EXPOSE")) == [port]


def healthcheck_command(found: list[Instruction]) -> list[str]:
    options, cmd, command = re.split(r"(?:^|\s+)(CMD)\s+", last(found, "HEALTHCHECK"), maxsplit=1)
    assert cmd == "CMD"
    assert all(word.startswith("--") for word in options.split()), options
    return arguments(command)


def test_healthcheck_asks_a_real_route(dockerfile: list[Instruction], tmp_path: Path) -> None:
    command = healthcheck_command(dockerfile)
    match = re.search(r"http://127\.0\.0\.1:[^/'\"]+(/[\w/-]*)", " ".join(command))
    assert match, command
    settings = Settings(cache_dir=tmp_path)
    app = create_app(
        settings, queue=InMemoryJobQueue(), store=LocalArtifactStore(settings.storage.files_root)
    )
    path = match.group(1)
    assert "get" in app.openapi()["paths"].get(path, {}), f"{path} is not a route of the app"
    with TestClient(app) as client:
        assert client.get(path).status_code == 200


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[int]:
    """An API-node app served by uvicorn on a free loopback port."""
    settings = Settings(cache_dir=tmp_path)
    app = create_app(
        settings, queue=InMemoryJobQueue(), store=LocalArtifactStore(settings.storage.files_root)
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not (server.started and server.servers):
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    port = int(server.servers[0].sockets[0].getsockname()[1])
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.slow
def test_healthcheck_command_passes_against_the_app(
    dockerfile: list[Instruction], api_server: int
) -> None:
    command = healthcheck_command(dockerfile)
    assert command[0] == "python3"
    env = {**os.environ, "FLUX2_PORT": str(api_server)}
    ok = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    env["FLUX2_PORT"] = "1"  # nothing listens there: the check must fail
    bad = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=60)
    assert bad.returncode != 0


# -- docker-compose.yml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of environment"
    return {key: _interpolate(str(value)) for key, value in env.items()}


def _interpolate(value: str) -> str:
    """Compose's ${VAR:?msg} / ${VAR:-default}, with a stand-in for required values."""
    return re.sub(
        r"\$\{(\w+)(?::([?-])([^}]*))?\}",
        lambda m: m.group(3) if m.group(2) == "-" else "sha256:" + "0" * 64,
        value,
    )


def test_compose_has_redis_one_api_and_one_gpu_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker"}
    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    for name in ("api", "worker"):
        build = services[name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def _parse(service: dict[str, Any]) -> Any:
    command = service["command"]
    assert isinstance(command, list), "use the list form: no shell in between"
    return build_parser().parse_args(command)


def test_compose_commands_parse_and_share_one_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api, worker = _parse(services["api"]), _parse(services["worker"])
    assert (api.command, worker.command) == ("api", "worker")
    assert api.redis_url == worker.redis_url
    assert api.redis_url.startswith("redis://redis:")
    assert api.host == "0.0.0.0"
    published = [str(p) for p in services["api"]["ports"]]
    assert any(p.endswith(f":{api.port}") for p in published), published
    assert worker.model.startswith("/models/")


def test_compose_worker_gets_a_gpu_and_read_only_weights(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert any(str(v).endswith(":/models:ro") for v in worker["volumes"])
    assert worker["healthcheck"] == {"disable": True}
    assert "deploy" not in compose["services"]["api"]  # the API node needs no GPU


def test_compose_variables_are_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = compose["services"]["api"]
    assert "FLUX2_API_KEYS" in api["environment"]
    for service in compose["services"].values():
        check_flux2_variables(service_env(service), monkeypatch)
    for name in re.findall(r"\bFLUX2_\w+", COMPOSE.read_text()):
        assert name.removeprefix("FLUX2_").lower() in Settings.option_names(), name
    lora = compose["services"]["worker"]["environment"].get("FLUX2_LORA_PATH")
    assert lora is None or lora.startswith("/models/")
