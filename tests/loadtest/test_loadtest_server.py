"""``flux2-edit loadtest`` against the real tiny-model server, as users run it: a subprocess,
sync and queue mode, closed and open loop; the report opened in headless Chromium; and the
README's commands."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from loadtest_helpers import loadtest, read_result

from benchmarks.common import Server
from service.loadtest.stats import percentile

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
REQUESTS = 4
COMBINATIONS = [("sync", "closed"), ("sync", "open"), ("queue", "closed"), ("queue", "open")]


@dataclass(frozen=True)
class Run:
    mode: str
    loop: str
    done: subprocess.CompletedProcess[str]
    result: dict[str, Any]
    html: Path


@pytest.fixture(scope="module", params=COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def run(
    request: pytest.FixtureRequest, server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Run:
    """One load test of REQUESTS edits (512x512 output) plus one warm-up."""
    mode, loop = request.param
    folder = tmp_path_factory.mktemp(f"{mode}-{loop}")
    load = ["--rate", "2", "--concurrency", "8"] if loop == "open" else ["--concurrency", "2"]
    done = loadtest(
        [
            "run",
            "--target",
            server.origin,
            "--mode",
            mode,
            *load,
            "--requests",
            str(REQUESTS),
            "--warmup",
            "1",
            "--image-size",
            "square",
            "--out",
            "result.json",
        ],
        cwd=folder,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return Run(mode, loop, done, read_result(folder / "result.json"), folder / "result.html")


def test_the_json_has_every_sample(run: Run) -> None:
    samples = run.result["samples"]
    measured = [s for s in samples if s["phase"] == "measured"]
    assert [s["phase"] for s in samples].count("warmup") == 1
    assert sorted(s["index"] for s in measured) == list(range(REQUESTS))
    assert {s["outcome"] for s in samples} == {"ok"}
    for s in measured:
        assert 0 < s["latency_s"] < 120
        assert s["end_s"] == pytest.approx(s["start_s"] + s["latency_s"])
        assert s["server_timings"]["inference"] > 0  # the server's own timings
        assert s["images"] == 1 and s["image_bytes"] > 0 and s["request_bytes"] > 10_000
        assert s["retries"] == 0
        if run.mode == "queue":  # timed from fal-client's status events
            assert s["request_id"] and s["submit_s"] > 0
            assert 0 <= s["queue_s"] < s["latency_s"] and s["run_s"] > 0
            assert s["server_metrics"]["inference_time"] > 0
        else:
            assert s["queue_s"] is None and s["submit_s"] is None
        assert (s["scheduled_s"] is not None) == (run.loop == "open")
    settings = run.result["settings"]
    assert (settings["mode"], settings["loop"]) == (run.mode, run.loop)
    assert run.result["target"]["run_url"].startswith("http://127.0.0.1:")
    assert run.result["machine"]["cpu_count"] and run.result["versions"]["fal-client"] == "1.0.3"


def test_the_summary_is_computed_from_the_samples(run: Run) -> None:
    latencies = sorted(s["latency_s"] for s in run.result["samples"] if s["phase"] == "measured")
    summary = run.result["summary"]
    assert summary["ok"] == REQUESTS and summary["errors"] == 0 and summary["error_rate"] == 0
    assert summary["latency_s"]["p50"] == pytest.approx((latencies[1] + latencies[2]) / 2)
    assert summary["latency_s"]["p99"] == pytest.approx(percentile(latencies, 99))
    assert summary["latency_s"]["max"] == pytest.approx(latencies[-1])
    window = run.result["measured_end_s"] - run.result["measured_start_s"]
    assert summary["requests_per_s"] == pytest.approx(REQUESTS / window)
    assert f"{REQUESTS} ok, 0 errors" in run.done.stdout
    assert re.search(r"latency \(s\): p50 [\d.]+ +p90 [\d.]+ +p95", run.done.stdout)


def test_the_report_renders_in_a_browser(run: Run, browser: Browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        page.goto(run.html.as_uri())
        rows = page.locator("table#percentiles tbody tr")
        assert rows.first.locator("td").first.inner_text() == "end-to-end latency (s)"
        cells = rows.first.locator("td").all_inner_texts()
        assert cells[1] == str(REQUESTS)  # n
        p50 = run.result["summary"]["latency_s"]["p50"]
        assert cells[4] == f"{p50:.3f}"
        chart = page.locator("svg#latency-over-time")
        assert chart.is_visible() and chart.bounding_box()["width"] > 500  # type: ignore[index]
        assert page.locator("svg#latency-over-time circle.sample.ok").count() == REQUESTS
        assert page.locator("svg#latency-histogram rect.bar").count() >= 1
        if run.mode == "queue":
            assert page.get_by_text("time in queue (s)").is_visible()
        page.screenshot(path=str(tmp_path / f"report-{run.mode}-{run.loop}.png"), full_page=True)
    finally:
        page.close()
    assert not problems, problems
    assert (tmp_path / f"report-{run.mode}-{run.loop}.png").stat().st_size > 10_000


def test_text_to_image_errors_are_counted_not_crashes(server: Server, tmp_path: Path) -> None:
    """The server serves only the flash edit (FLUX2_ENDPOINTS): every t2i request is a typed
    error."""
    done = loadtest(
        [
            "run",
            "--target",
            server.origin,
            "--mix",
            "t2i",
            "--requests",
            "3",
            "--warmup",
            "0",
            "--out",
            "t2i.json",
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # nothing succeeded
    summary = read_result(tmp_path / "t2i.json")["summary"]
    assert (summary["requests"], summary["ok"], summary["errors"]) == (3, 0, 3)
    assert summary["errors_by_type"] == {"http_404": 3}
    assert "error http_404: 3" in done.stdout
    assert "Traceback" not in done.stderr


def _readme_commands() -> list[str]:
    section = README.read_text().split("## Benchmark your deployment", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README section has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_commands_work_against_a_local_server(server: Server, tmp_path: Path) -> None:
    """The two commands, as written, except: the local server's port instead of 8000, the
    hosted run pointed at it too (no internet here; the same code path), and
    2 requests instead of 20 to spare the CPU."""
    commands = _readme_commands()
    assert len(commands) == 2
    assert "--target fal" in commands[1] and "--compare self.json" in commands[1]
    venv_bin = Path(sys.executable).parent
    for command in commands:
        local = (
            command.replace("http://127.0.0.1:8000", server.origin)
            .replace("--target fal", f"--target {server.origin}")
            .replace("--requests 20", "--requests 2")
            .replace(".venv/bin/", f"{venv_bin}/")
        )
        done = subprocess.run(
            ["bash", "-c", local],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"{shlex.quote(local)}\n{done.stdout}\n{done.stderr}"
    for name in ("self", "fal"):
        assert read_result(tmp_path / f"{name}.json")["summary"]["ok"] == 2
        assert (tmp_path / f"{name}.html").is_file()
    compared = done.stdout.split("A: ", 1)[1]
    assert re.search(r"latency p50 \(s\) +[\d.]+ +[\d.]+ +x[\d.]+", compared)
