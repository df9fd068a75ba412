"""The ``flux2-edit loadtest`` command in a subprocess against the stub server: Ctrl-C, caps,
the report command and the missing-key error."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from loadtest_helpers import Reply, StubServer, loadtest, read_result, running_stub

from benchmarks.common import flux2_edit_command

pytestmark = pytest.mark.slow


def test_ctrl_c_stops_at_once_and_writes_a_partial_report(stub: StubServer, tmp_path: Path) -> None:
    # Two requests are answered, the third is held until Ctrl-C.
    stub.script.extend([Reply(), Reply(), Reply(hold=True)])
    process = subprocess.Popen(
        [
            *flux2_edit_command(),
            "loadtest",
            "run",
            "--target",
            stub.origin,
            "--requests",
            "50",
            "--warmup",
            "0",
            "--out",
            "partial.json",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while stub.holding < 1:
            assert process.poll() is None and time.monotonic() < deadline, "never got that far"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        stub.release.set()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, out + err
    result = read_result(tmp_path / "partial.json")
    assert result["interrupted"] and result["stop_reason"] == "interrupted"
    assert [s["outcome"] for s in result["samples"]] == ["ok", "ok", "unfinished"]
    assert result["samples"][-1]["error_type"] == "interrupted"
    assert (tmp_path / "partial.html").is_file()
    assert "2 ok, 0 errors, 0 dropped, 1 unfinished" in out
    assert "interrupted" in err


def test_caps_are_enforced_before_anything_is_sent(stub: StubServer, tmp_path: Path) -> None:
    for options, message in [
        (["--requests", "10001"], "requests must be 1..10000"),
        (["--concurrency", "500"], "concurrency must be 1..100"),
        (["--rate", "5000"], "rate must be over 0"),
        (["--duration", "99999"], "duration must be over 0 and at most 3600 s"),
    ]:
        done = loadtest(["run", "--target", stub.origin, *options], cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr, done.stderr
    assert stub.paths == []


def test_the_hosted_service_without_a_key_fails_before_the_load(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    env["FAL_HOME_DIR"] = str(tmp_path)  # no `fal auth login` token there either
    done = subprocess.run(
        [*flux2_edit_command(), "loadtest", "run", "--target", "fal", "--out", "x.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "fal's hosted service needs a key: export FAL_KEY=" in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_report_redraws_the_html_of_a_result(stub: StubServer, tmp_path: Path) -> None:
    done = loadtest(
        [
            "run",
            "--target",
            stub.origin,
            "--requests",
            "3",
            "--no-html",
            "--out",
            "r.json",
            "--label",
            "stub run",
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "r.html").exists()
    assert read_result(tmp_path / "r.json")["label"] == "stub run"
    redrawn = loadtest(["report", "r.json", "--html", "out/report.html"], cwd=tmp_path)
    assert redrawn.returncode == 0, redrawn.stderr
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<h1>Load test: stub run</h1>" in html and 'id="percentiles"' in html


def test_an_https_target_with_a_local_ca(tmp_path: Path) -> None:
    """The hosted service's scheme: https, verified against SSL_CERT_FILE (the CA of
    ``flux2-edit cert``), the same code path."""
    certs = tmp_path / "certs"
    made = subprocess.run(
        [*flux2_edit_command(), "cert", "--out", str(certs)],
        timeout=60,
        capture_output=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    with running_stub(certs) as stub:
        assert stub.origin.startswith("https://")
        done = loadtest(
            ["run", "--target", stub.origin, "--requests", "2", "--out", "tls.json"],
            cwd=tmp_path,
            env={"SSL_CERT_FILE": str(certs / "ca.pem")},
        )
        assert done.returncode == 0, done.stderr
        assert read_result(tmp_path / "tls.json")["summary"]["ok"] == 2
        assert stub.served == 3  # the warm-up and two measured requests, over TLS
