"""Helpers shared by the benchmark scripts (no torch at import time).

* :func:`run_record`: what every result file starts with: the script, the time, the git commit
  (and whether the tree had uncommitted changes), the machine (CPU, memory, load average, GPU)
  and library versions;
* :func:`percentile` and :func:`summarize`: latency statistics (numpy's default ``linear``
  interpolation, so p50 of an even count is the mean of the two middle values);
* :class:`LoadMonitor`: samples the 1-minute load average while a benchmark runs, because the
  2-core machines these run on are shared and a busy neighbour moves every figure;
* :func:`write_json`, :func:`write_csv` and :func:`summary_line` (the one line each script
  prints last, and what ``run_all`` echoes);
* :func:`tiny_server`: a real ``flux2-edit serve --model tiny`` subprocess on a free port with its
  own cache directory, for the HTTP benchmarks.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from service.loadtest.stats import percentile as percentile  # one implementation for both

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BASE_PACKAGES = ("torch", "diffusers", "transformers", "numpy", "pillow")


# -- statistics ------------------------------------------------------------------------------


def summarize(values: Sequence[float], digits: int = 4) -> dict[str, float]:
    """Count, p50, p95, mean, min and max of ``values``, rounded to ``digits`` decimals."""
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), digits),
        "p95": round(percentile(values, 95), digits),
        "mean": round(math.fsum(values) / len(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


# -- what ran, where -------------------------------------------------------------------------


def git_info(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The short commit sha and whether tracked files had uncommitted changes (the recorded
    results themselves excepted: each benchmark of a ``make bench`` run rewrites them)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    results = RESULTS_DIR.relative_to(REPO_ROOT).as_posix()
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", f":!{results}")
    return {"sha": git("rev-parse", "--short", "HEAD") or "unknown", "dirty": bool(changed)}


def package_versions(packages: Sequence[str]) -> dict[str, str]:
    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    """CPU, memory, load and, when torch is already imported, its threads and GPU."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "python": platform.python_version(),
        "load_average_1_5_15": load_average(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        cuda = torch.cuda.is_available()
        info["gpu"] = torch.cuda.get_device_name() if cuda else None
    return info


def run_record(script: str, packages: Sequence[str] = BASE_PACKAGES) -> dict[str, Any]:
    """The header of every result file."""
    return {
        "script": script,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_info(),
        "machine": machine_info(),
        "versions": package_versions(packages),
    }


def _cpu_fields() -> list[int] | None:
    """The aggregate ``cpu`` line of /proc/stat: user nice system idle iowait irq softirq steal…"""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot (steal counts as busy: not ours to use)."""
    fields = _cpu_fields()
    if fields is None or len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_busy(interval: float = 1.0) -> float | None:
    """Fraction (0..1) of all CPUs busy over the next ``interval`` seconds (None off Linux)."""
    before = _cpu_times()
    time.sleep(interval)
    after = _cpu_times()
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def wait_for_quiet(
    timeout: float, max_busy: float = 0.25, settle: int = 3, interval: float = 1.0
) -> dict[str, Any]:
    """Wait (at most ``timeout`` s) until other work leaves the CPUs mostly idle.

    Quiet = ``settle`` consecutive ``interval``-second samples with at most ``max_busy`` of all
    CPUs busy. Call it before a benchmark starts its own work; the result goes into the report,
    so a figure taken on a busy machine says so.
    """
    started = time.monotonic()
    calm, last = 0, None
    while timeout > 0:
        last = cpu_busy(interval)
        if last is None:
            break
        calm = calm + 1 if last <= max_busy else 0
        if calm >= settle or time.monotonic() - started >= timeout:
            break
    waited = time.monotonic() - started
    if timeout > 0 and last is not None and calm < settle:
        progress(f"the CPUs stayed busy ({100 * last:.0f} %) for {waited:.0f} s; going ahead")
    return {
        "waited_s": round(waited, 1),
        "quiet": calm >= settle,
        "cpu_busy_last": None if last is None else round(last, 2),
        "max_busy": max_busy,
    }


class LoadMonitor:
    """Samples the 1-minute load average every ``interval`` seconds on a daemon thread."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._cpu_start: list[int] | None = None
        self._cpu_end: list[int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="load-monitor", daemon=True)

    def _main(self) -> None:
        while True:
            load = load_average()
            if load:
                self.samples.append(load[0])
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> LoadMonitor:
        self._cpu_start = _cpu_fields()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._cpu_end = _cpu_fields()

    def report(self) -> dict[str, Any]:
        """Load (1-minute average) at the start and end of the run, its mean and max; with
        /proc/stat, the fraction of CPU time busy (this benchmark included) and stolen by the
        hypervisor over the run."""
        if not self.samples:
            return {"samples": 0}
        report: dict[str, Any] = {
            "samples": len(self.samples),
            "start": self.samples[0],
            "end": self.samples[-1],
            "mean": round(math.fsum(self.samples) / len(self.samples), 2),
            "max": max(self.samples),
        }
        start, end = self._cpu_start, self._cpu_end
        if start and end and len(start) == len(end) == 8 and sum(end) > sum(start):
            total = sum(end) - sum(start)
            idle = (end[3] + end[4]) - (start[3] + start[4])
            report["cpu_busy_fraction"] = round(1 - idle / total, 3)  # ours included
            report["cpu_steal_fraction"] = round((end[7] - start[7]) / total, 3)  # the VM host's
        return report


# -- output ----------------------------------------------------------------------------------


def write_json(path: Path, report: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """One line per row; the columns are every key seen, in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def progress(message: str) -> None:
    """A progress note on stderr (stdout carries only the summary line)."""
    print(f"  {message}", file=sys.stderr, flush=True)


def summary_line(name: str, text: str) -> str:
    """Print and return ``name: text`` on one line (newlines folded), flushed."""
    line = f"{name}: {' '.join(text.split())}"
    print(line, flush=True)
    return line


# -- a benchmark's main ---------------------------------------------------------------------


def benchmark_parser(doc: str, out: Path) -> argparse.ArgumentParser:
    """A parser with the options every CPU benchmark takes: ``--wait-quiet`` and ``--out``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--wait-quiet", type=float, default=60, help="wait up to N s for idle CPUs first (0: no)"
    )
    parser.add_argument("--out", type=Path, default=out, help="JSON result (CSV beside it)")
    return parser


def run_benchmark(
    name: str,
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    summary: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """Run a benchmark the same way every time: with no ``FLUX2_*`` variables (in-process engines
    must see what the servers see), after waiting for quiet CPUs; write its JSON and CSV
    (``report["results"]``) and print its summary line. Returns the report."""
    for key in [k for k in os.environ if k.startswith("FLUX2_")]:
        del os.environ[key]
    quiet = wait_for_quiet(args.wait_quiet)
    report = run(args)
    report["quiet_before_start"] = quiet
    write_json(args.out, report)
    write_csv(args.out.with_suffix(".csv"), report["results"])
    progress(f"wrote {args.out}")
    summary_line(name, summary(report))
    return report


# -- a real server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flux2_edit_command() -> list[str]:
    exe = shutil.which("flux2-edit", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "service.cli"]


@dataclass(frozen=True)
class Server:
    """A running server: its origin (``http(s)://127.0.0.1:PORT``), process id and log; with
    TLS, ``ca`` is the certificate authority clients must trust (``flux2-edit cert``)."""

    origin: str
    pid: int
    log: Path
    ca: Path | None = None

    @property
    def host_port(self) -> str:
        """``127.0.0.1:PORT``: what the Python fal client's ``FAL_RUN_HOST`` wants."""
        return self.origin.split("://", 1)[1]


class ServerFailed(RuntimeError):
    pass


def wait_until_ready(
    process: subprocess.Popen[Any],
    origin: str,
    log: Path,
    *,
    timeout: float,
    verify: ssl.SSLContext | bool = True,
) -> None:
    """Poll ``origin/ready`` until the server answers 200 (its worker loaded and warmed up).

    Raises:
        ServerFailed: the process exited, or was not ready within ``timeout`` seconds (the
            message carries the end of its log).
    """
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(verify=verify, timeout=5) as client:
        while True:
            if process.poll() is not None:
                raise ServerFailed(f"server exited early:\n{log.read_text()[-4000:]}")
            try:
                if client.get(f"{origin}/ready").status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise ServerFailed(
                    f"server not ready after {timeout:.0f} s:\n{log.read_text()[-4000:]}"
                )
            time.sleep(0.2)


@contextmanager
def tiny_server(
    root: Path,
    settings: Mapping[str, str],
    *,
    ready_timeout: float = 300.0,
    tls: bool = False,
) -> Iterator[Server]:
    """Run ``flux2-edit serve --model tiny`` on a free loopback port until the block ends.

    The one way the benchmarks and the tests start a real server. It gets this environment
    minus every ``FLUX2_*`` variable, plus ``settings`` (``FLUX2_*`` names) and
    ``FLUX2_CACHE_DIR=root/cache`` unless ``settings`` names one, so it never touches the user's
    cache or another run's port. With ``tls`` it serves https with a certificate from
    ``flux2-edit cert`` (the CA is ``Server.ca``). Waits for ``/ready`` (the worker has loaded
    the model and run its warm-up edit).
    """
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX2_")}
    env["FLUX2_CACHE_DIR"] = str(root / "cache")
    env.update(settings)
    tls_args: list[str] = []
    ca = None
    if tls:
        certs = root / "certs"
        subprocess.run([*flux2_edit_command(), "cert", "--out", str(certs)], check=True, timeout=60)
        tls_args = [
            "--ssl-certfile",
            str(certs / "cert.pem"),
            "--ssl-keyfile",
            str(certs / "key.pem"),
        ]
        ca = certs / "ca.pem"
    port = free_port()
    log = root / f"server-{port}.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [*flux2_edit_command(), "serve", "--model", "tiny", "--host", "127.0.0.1"]
            + ["--port", str(port), *tls_args],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
    origin = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca)) if ca else True
    try:
        wait_until_ready(process, origin, log, timeout=ready_timeout, verify=verify)
        yield Server(origin=origin, pid=process.pid, log=log, ca=ca)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
