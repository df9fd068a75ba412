"""The benchmark figure is drawn from the recorded JSON (``benchmarks.plot``)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from benchmarks.plot import _nice_top, _ticks, main

SVG = "{http://www.w3.org/2000/svg}"


def service_report() -> dict[str, object]:
    rows = [
        {"safety_checker": "none", "size": size, "path": path, "p50_s": p50}
        for size, engine in ((512, 0.3), (1024, 1.5))
        for path, p50 in (("engine", engine), ("sync", engine + 0.05), ("queue", engine + 0.1))
    ]
    rows.append({"safety_checker": "opennsfw", "size": 512, "path": "queue", "p50_s": 9.0})
    return {"git": {"sha": "abc1234"}, "results": rows}


def batching_report() -> dict[str, object]:
    combined = [
        {"batching": mode, "concurrency": c, "throughput_images_per_s": rate}
        for c in (1, 4, 16)
        for mode, rate in (("on", 2.0 + c / 16), ("off", 2.0))
    ]
    return {"git": {"sha": "abc1234"}, "results": [], "combined": combined}


def bars(svg: Path) -> list[ET.Element]:
    return [e for e in ET.parse(svg).getroot().iter(f"{SVG}rect") if e.get("class") == "bar"]


def test_each_recorded_figure_is_one_bar(tmp_path: Path) -> None:
    (tmp_path / "service.json").write_text(json.dumps(service_report()))
    (tmp_path / "batching.json").write_text(json.dumps(batching_report()))
    assert main(["--results", str(tmp_path)]) == 0
    drawn = bars(tmp_path / "summary.svg")
    assert len(drawn) == 2 * 3 + 3 * 2  # sizes x paths + levels x modes; opennsfw left out
    titles = [e.findtext(f"{SVG}title") for e in drawn]
    assert "1024² queue: 1.6 s" in titles
    assert "c=16 batching on: 3 img/s" in titles
    assert "recorded at git abc1234" in (tmp_path / "summary.svg").read_text()


def test_bar_heights_are_proportional_to_the_values(tmp_path: Path) -> None:
    (tmp_path / "service.json").write_text(json.dumps(service_report()))
    main(["--results", str(tmp_path), "--out", str(tmp_path / "out.svg")])
    heights = {
        e.findtext(f"{SVG}title"): float(e.get("height", "0")) for e in bars(tmp_path / "out.svg")
    }
    ratio = heights["1024² engine: 1.5 s"] / heights["512² engine: 0.3 s"]
    assert ratio == pytest.approx(5.0, rel=0.01)


def test_missing_results_leave_their_panel_out(tmp_path: Path) -> None:
    main(["--results", str(tmp_path)])
    assert bars(tmp_path / "summary.svg") == []


@pytest.mark.parametrize(
    ("value", "top"),
    [(0.0, 1.0), (0.42, 0.5), (1.0, 1.0), (1.7, 2.0), (2.6, 5.0), (7.3, 10.0), (13, 20)],
)
def test_axis_tops_are_round_numbers(value: float, top: float) -> None:
    assert _nice_top(value) == pytest.approx(top)


@pytest.mark.parametrize(
    ("top", "labels"),
    [(5.0, [0, 1, 2, 3, 4, 5]), (2.0, [0, 0.5, 1, 1.5, 2]), (0.5, [0, 0.1, 0.2, 0.3, 0.4, 0.5])],
)
def test_grid_labels_are_round(top: float, labels: list[float]) -> None:
    ticks = _ticks(top)
    assert [round(top * k / ticks, 9) for k in range(ticks + 1)] == labels
