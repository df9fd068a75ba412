"""Two synthetic result files compared: the ratios are B/A of the right numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from loadtest_helpers import sample

from service.cli import main
from service.loadtest import compare, results
from service.loadtest.runner import RunResult
from service.loadtest.sample import Outcome, Sample


def _write(
    path: Path, label: str, samples: list[Sample], window: float, **settings: object
) -> Path:
    run = RunResult(
        samples=samples,
        measured_start_s=1.0,
        measured_end_s=1.0 + window,
        stop_reason="requests",
        interrupted=False,
    )
    document = results.build_document(
        run,
        label=label,
        target={"url": label},
        started_at=datetime.now(UTC),
        settings={"mode": "sync", "loop": "closed", "concurrency": 2, **settings},
    )
    return results.write_document(path, document)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    # A: latencies 1..4 s, 4 ok in 8 s, no errors. B: twice as slow, half the throughput, one
    # error in five answers, images 4 per request.
    a = [sample(i, float(i + 1), start=i, server_timings={"inference": 0.5}) for i in range(4)]
    b = [
        sample(i, 2.0 * (i + 1), start=i, images=4, server_timings={"inference": 1.5})
        for i in range(4)
    ]
    b.append(sample(4, 0.1, outcome=Outcome.ERROR, error_type="http_500"))
    return (
        _write(tmp_path / "self.json", "self-hosted", a, window=8.0),
        _write(tmp_path / "fal.json", "fal", b, window=16.0, concurrency=4),
    )


def test_ratios_are_b_over_a(files: tuple[Path, Path]) -> None:
    a, b = (results.load(path) for path in files)
    rows = {row.metric: row for row in compare.compare(a, b)}
    # latency p50: A = 2.5, B = 5.0; p90: A = 3.7, B = 7.4; max 4 vs 8
    assert (rows["latency p50"].a, rows["latency p50"].b) == pytest.approx((2.5, 5.0))
    for metric in (
        "latency p50",
        "latency p90",
        "latency p95",
        "latency p99",
        "latency max",
        "latency mean",
    ):
        assert rows[metric].ratio == pytest.approx(2.0), metric
    assert rows["server inference p50"].ratio == pytest.approx(3.0)
    # throughput: A = 4 ok / 8 s = 0.5/s, B = 4 ok / 16 s = 0.25/s; images 0.5/s vs 1.0/s
    assert (rows["throughput"].a, rows["throughput"].b) == pytest.approx((0.5, 0.25))
    assert rows["throughput"].ratio == pytest.approx(0.5)
    assert rows["images"].ratio == pytest.approx(2.0)
    assert (rows["error rate"].a, rows["error rate"].b) == pytest.approx((0.0, 0.2))
    assert rows["error rate"].ratio is None  # B/0 has no ratio
    assert "time in queue p50" not in rows  # neither file has queue times


def test_compare_command_prints_the_ratios_and_the_setting_differences(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["loadtest", "compare", str(files[0]), str(files[1])]) == 0
    out = capsys.readouterr().out
    lines = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    assert "A: self-hosted" in out and "B: fal" in out
    assert lines["latency p50 (s)"].split()[-3:] == ["2.5", "5", "x2.00"]
    assert lines["throughput (req/s)"].split()[-3:] == ["0.5", "0.25", "x0.50"]
    assert "settings differ" in out and "concurrency: 2 vs 4" in out


def test_compare_refuses_a_file_that_is_not_a_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    assert main(["loadtest", "compare", str(other), str(other)]) == 2
    assert "not a flux2-edit-loadtest/1 result file" in capsys.readouterr().err


def test_a_result_file_round_trips_every_sample(files: tuple[Path, Path]) -> None:
    loaded = results.load(files[1])
    assert len(loaded.samples) == 5
    assert [s.latency_s for s in loaded.samples[:4]] == [2.0, 4.0, 6.0, 8.0]
    assert loaded.summary == loaded.document["summary"]  # recomputed equals what was written
