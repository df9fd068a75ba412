"""An API node under load, and a soak: what waiting clients cost Redis, and what leaks.

Usage::

    .venv/bin/python -m benchmarks.bench_api_load        # writes results/api-load.{json,csv}

A throw-away ``redis-server`` and one ``flux2-edit api`` node run on loopback. Three phases:

1. **Waiting.** With no worker, ``--clients`` clients wait on the node: half sync runs
   (``POST /fal-ai/flux-2/flash/edit``, each waiting for its own job) and half status streams
   (``…/status/stream`` of queued jobs). Over ``--idle-seconds`` the script records the commands
   Redis served per second (``INFO stats``, its own two calls taken out) and the latency of
   ``GET /health`` (sequential calls) while they all wait.
2. **Completion.** A ``flux2-edit worker`` on the tiny model (no warm-up, 2 steps) starts and runs
   the queued jobs. For each sync run the script records the delay from the job's completion
   (``completed_at`` in Redis) to its response arriving.
3. **Soak.** ``--soak-jobs`` short jobs through the node, ``--soak-concurrency`` at a time; the
   resident memory and open file descriptors of the API node and the worker before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from benchmarks.common import (
    RESULTS_DIR,
    LoadMonitor,
    benchmark_parser,
    flux2_edit_command,
    free_port,
    progress,
    run_benchmark,
    run_record,
    summarize,
)

NAME = "bench_api_load"
SUBMIT = "/queue/fal-ai/flux-2/flash/edit"
SYNC = "/fal-ai/flux-2/flash/edit"
REQUESTS = "/queue/fal-ai/flux-2/requests"


def reference() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 160, 90)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def body(seed: int) -> dict[str, Any]:
    return {"prompt": f"edit {seed}", "image_urls": [reference()], "image_size": "square",
            "seed": seed}  # fmt: skip


# -- processes ---------------------------------------------------------------------------------


@contextmanager
def redis_server(folder: Path) -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench_api_load needs redis-server (make system-deps)")
    port = free_port()
    with (folder / "redis.log").open("w") as log:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(folder),
            ],  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def flux2(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("w") as out:
        process = subprocess.Popen([*flux2_edit_command(), *args], env=env, stdout=out,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def footprint(pid: int) -> dict[str, float]:
    """Resident memory (MB) and open file descriptors of a process (Linux /proc)."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return {"rss_mb": round(rss_kb / 1024, 1), "open_fds": len(os.listdir(f"/proc/{pid}/fd"))}


class RedisStats:
    """Commands Redis has served, read over a raw connection (two commands per read)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def processed(self) -> int:
        import redis

        with redis.Redis(port=self.port) as client:
            return int(client.info("stats")["total_commands_processed"])

    def completed_at(self, job_id: str) -> float | None:
        import redis

        with redis.Redis(port=self.port, decode_responses=True) as client:
            value = client.hget(f"flux2:req:{job_id}", "completed_at")
        return float(value) if value else None


# -- phases ------------------------------------------------------------------------------------


async def waiting_phase(
    origin: str, stats: RedisStats, clients: int, idle: float
) -> tuple[dict[str, Any], list[asyncio.Task[Any]], httpx.AsyncClient]:
    """Start the waiting clients; measure Redis and /health while they wait. Returns the
    measurements and the still-running sync-run tasks (they finish in the completion phase)."""
    limits = httpx.Limits(max_connections=clients + 20, max_keepalive_connections=clients + 20)
    http = httpx.AsyncClient(base_url=origin, timeout=600, limits=limits)
    streams = clients // 2
    queued = []
    for seed in range(streams):
        response = await http.post(SUBMIT, json=body(seed))
        response.raise_for_status()
        queued.append(response.json()["request_id"])

    async def stream(job_id: str) -> int:
        events = 0
        async with http.stream("GET", f"{REQUESTS}/{job_id}/status/stream") as response:
            async for line in response.aiter_lines():
                events += line.startswith("data:")
        return events

    async def sync(seed: int) -> dict[str, Any]:
        response = await http.post(SYNC, json=body(1000 + seed))
        return {"status": response.status_code, "arrived": time.time(),
                "job": response.headers.get("x-fal-request-id", "")}  # fmt: skip

    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(stream(job_id)) for job_id in queued]
    tasks += [asyncio.create_task(sync(seed)) for seed in range(clients - streams)]
    await asyncio.sleep(3.0)  # every client connected and waiting
    before = stats.processed()
    started = time.monotonic()
    health = []
    while time.monotonic() - started < idle:
        t0 = time.perf_counter()
        (await http.get("/health")).raise_for_status()
        health.append(time.perf_counter() - t0)
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - started
    commands = stats.processed() - before - 2  # our own two INFO calls
    measured = {
        "waiting_clients": clients,
        "sync_runs": clients - streams,
        "status_streams": streams,
        "idle_seconds": round(elapsed, 2),
        "redis_commands": commands,
        "redis_commands_per_second": round(commands / elapsed, 2),
        "health_ms": {
            k: (round(v * 1000, 2) if k != "n" else v) for k, v in summarize(health, 6).items()
        },  # fmt: skip
    }
    return measured, tasks, http


async def soak(origin: str, jobs: int, concurrency: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=origin, timeout=300, limits=limits) as http:
        semaphore = asyncio.Semaphore(concurrency)
        failures = 0

        async def one(seed: int) -> None:
            nonlocal failures
            async with semaphore:
                response = await http.post(SYNC, json=body(10_000 + seed))
                failures += response.status_code != 200

        started = time.monotonic()
        await asyncio.gather(*(one(seed) for seed in range(jobs)))
        return {"jobs": jobs, "failures": failures, "seconds": round(time.monotonic() - started, 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flux2-bench-api-") as tmp, LoadMonitor() as load:
        root = Path(tmp)
        with redis_server(root) as redis_port:
            env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX2_")}
            env.update(
                FLUX2_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                FLUX2_CACHE_DIR=str(root / "cache"),
                FLUX2_REFERENCE_PIXELS=str(64 * 64),
                FLUX2_SCHEDULE="1.0,0.5",
                FLUX2_WARMUP="false",
                FLUX2_SAFETY_CHECKER="none",
                FLUX2_LOG_LEVEL="warning",
                FLUX2_MAX_QUEUE_LENGTH="10000",
            )
            port = free_port()
            origin = f"http://127.0.0.1:{port}"
            stats = RedisStats(redis_port)
            api_args = ["api", "--host", "127.0.0.1", "--port", str(port)]
            with flux2(api_args, env, root / "api.log") as api:
                _wait_listening(origin, api, root / "api.log")
                report: dict[str, Any] = {}

                async def phases() -> None:
                    measured, tasks, http = await waiting_phase(
                        origin, stats, args.clients, args.idle_seconds
                    )
                    progress(
                        f"{measured['waiting_clients']} waiting clients: "
                        f"{measured['redis_commands_per_second']} Redis commands/s, /health p95 "
                        f"{measured['health_ms']['p95']} ms"
                    )
                    report["waiting"] = measured
                    worker_args = ["worker", "--model", "tiny"]
                    with flux2(worker_args, env, root / "worker.log") as worker:
                        results = await asyncio.gather(*tasks)
                        await http.aclose()
                        delays = [
                            r["arrived"] - done
                            for r in results
                            if isinstance(r, dict)
                            and r["status"] == 200
                            and (done := stats.completed_at(str(r["job"]))) is not None
                        ]
                        report["completion_to_response_ms"] = {
                            k: (round(v * 1000, 2) if k != "n" else v)
                            for k, v in summarize(delays, 6).items()
                        }
                        progress(
                            f"completion → sync response: {report['completion_to_response_ms']}"
                        )
                        before = {"api": footprint(api.pid), "worker": footprint(worker.pid)}
                        report["soak"] = await soak(origin, args.soak_jobs, args.soak_concurrency)
                        after = {"api": footprint(api.pid), "worker": footprint(worker.pid)}
                        report["soak"]["footprint"] = {"before": before, "after": after}
                        progress(f"soak: {report['soak']}")

                asyncio.run(phases())
        load_report = load.report()
    record = run_record(NAME, ("redis", "httpx", "uvicorn", "fastapi", "starlette"))
    record.update(
        {
            "load_during_run": load_report,
            "wall_s": round(time.perf_counter() - started, 1),
            "setup": {
                "nodes": "redis-server (no persistence), one flux2-edit api, then one worker",
                "model": "tiny, 2 steps, no warm-up, 512² outputs, 64x64 references",
                "clients": args.clients,
                "idle_seconds": args.idle_seconds,
            },
            **report,
            "results": [_row(report)],
        }
    )
    return record


def _row(report: dict[str, Any]) -> dict[str, Any]:
    waiting, soak_report = report["waiting"], report["soak"]
    footprint_ = soak_report["footprint"]
    return {
        "waiting_clients": waiting["waiting_clients"],
        "redis_commands_per_second": waiting["redis_commands_per_second"],
        "health_p50_ms": waiting["health_ms"]["p50"],
        "health_p95_ms": waiting["health_ms"]["p95"],
        "completion_to_response_p50_ms": report["completion_to_response_ms"]["p50"],
        "completion_to_response_p95_ms": report["completion_to_response_ms"]["p95"],
        "soak_jobs": soak_report["jobs"],
        "soak_failures": soak_report["failures"],
        **{
            f"{proc}_{key}_{when}": footprint_[when][proc][key]
            for proc in ("api", "worker")
            for key in ("rss_mb", "open_fds")
            for when in ("before", "after")
        },
    }


def _wait_listening(origin: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """The API node answers /health (it has no worker yet: /ready would say 503)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the API node exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{origin}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("the API node did not start")


def summary(report: dict[str, Any]) -> str:
    row = report["results"][0]
    return (
        f"{row['waiting_clients']} waiting clients: {row['redis_commands_per_second']} Redis "
        f"commands/s, /health p50 {row['health_p50_ms']} ms p95 {row['health_p95_ms']} ms; "
        f"completion to sync response p50 {row['completion_to_response_p50_ms']} ms; soak "
        f"{row['soak_jobs']} jobs, {row['soak_failures']} failed, api RSS "
        f"{row['api_rss_mb_before']}->{row['api_rss_mb_after']} MB, fds "
        f"{row['api_open_fds_before']}->{row['api_open_fds_after']}; "
        f"load {report['load_during_run'].get('mean', '?')}"
    )


def main() -> int:
    parser = benchmark_parser(__doc__, RESULTS_DIR / "api-load.json")
    parser.add_argument("--clients", type=int, default=100, help="waiting clients (half streams)")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--soak-jobs", type=int, default=120)
    parser.add_argument("--soak-concurrency", type=int, default=8)
    run_benchmark(NAME, parser.parse_args(), run, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
