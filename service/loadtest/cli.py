"""``flux2-edit loadtest run|compare|report``: the command line of the load test.

``service.cli`` registers it with one call, :func:`add_loadtest_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import ConfigError, InvalidRequest
from service.loadtest import compare, report, results
from service.loadtest.mixes import MIXES, RequestSource, load_request_file, parse_image_size
from service.loadtest.mixes import parse_mix as parse_mix_text
from service.loadtest.plan import MAX_CONCURRENCY, Arrival, Loop, Plan
from service.loadtest.request import FalSender, Mode
from service.loadtest.runner import Runner
from service.loadtest.target import RetryCounter, Target, fal_key, parse_target, pointed_at
from service.loadtest.target import import_fal_client as _import_fal_client

OPEN_LOOP_IN_FLIGHT = 32  # default in-flight cap of an open loop


def add_loadtest_parser(commands: Any) -> None:
    """Add ``loadtest`` and its sub-commands to the ``flux2-edit`` sub-command parsers."""
    loadtest = commands.add_parser(
        "loadtest",
        help="latency of a fal-compatible endpoint (this server or fal's), via fal-client",
    )
    sub = loadtest.add_subparsers(dest="loadtest_command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="drive an endpoint and record every request")
    _run_options(run)
    run.set_defaults(handler=cmd_run)
    both = sub.add_parser("compare", help="two result files side by side, with ratios B/A")
    both.add_argument("a", type=Path, help="result file A (the baseline)")
    both.add_argument("b", type=Path, help="result file B")
    both.set_defaults(handler=cmd_compare)
    html = sub.add_parser("report", help="(re)draw the HTML report of a result file")
    html.add_argument("result", type=Path)
    html.add_argument("--html", type=Path, help="output (default: beside the result, .html)")
    html.set_defaults(handler=cmd_report)


def _run_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--target",
        required=True,
        help="'fal' (fal's hosted service; needs FAL_KEY) or a base URL, e.g. http://127.0.0.1:8000",
    )
    add(
        "--endpoint",
        help="endpoint id for every request (default: the mix's, e.g. fal-ai/flux-2/flash/edit)",
    )
    add(
        "--mix",
        default="edit-1ref",
        help=f"built-in requests, optionally weighted: {', '.join(MIXES)} (e.g. edit-1ref:3,t2i:1)",
    )
    add("--requests-file", type=Path, help="JSON lines: inputs, or {endpoint, input} (not --mix)")
    add("--image-size", help="set image_size on every request: a fal preset or WxH")
    add("--extra", help='JSON object merged into every input, e.g. \'{"output_format": "jpeg"}\'')
    add(
        "--mode",
        choices=[m.value for m in Mode],
        default="sync",
        help="sync: fal-client run(); queue: subscribe() with status events (default sync)",
    )
    add(
        "--concurrency",
        type=int,
        help=f"closed loop: parallel workers (default 1); open loop: most in flight "
        f"(default {OPEN_LOOP_IN_FLIGHT}); at most {MAX_CONCURRENCY}",
    )
    add("--rate", type=float, help="open loop: arrivals per second (without it: closed loop)")
    add(
        "--arrival",
        choices=[a.value for a in Arrival],
        default="poisson",
        help="open-loop arrivals: poisson (exponential gaps, seeded) or uniform",
    )
    add("--requests", type=int, help="measured requests (default 20 when --duration is not given)")
    add("--duration", type=float, help="seconds to send for (stops at whichever comes first)")
    add("--warmup", type=int, default=1, help="requests sent first and excluded (default 1)")
    add(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds requests still running at the end get, then recorded unfinished (120)",
    )
    add("--poll-interval", type=float, default=0.1, help="queue mode status polling (0.1 s)")
    add("--seed", type=int, default=0, help="seeds prompts, mixes and arrivals (0)")
    add("--label", help="name of this run in reports (default: the target's host)")
    add("--out", type=Path, help="result JSON (default loadtest-<time>.json)")
    add("--html", type=Path, help="HTML report (default: beside --out, .html)")
    add("--no-html", action="store_true", help="write no HTML report")
    add(
        "--compare",
        type=Path,
        metavar="RESULT",
        help="then print this run side by side with an earlier result file (A = that file)",
    )


def _source(args: argparse.Namespace) -> RequestSource:
    try:
        extra = json.loads(args.extra) if args.extra else None
        if extra is not None and not isinstance(extra, dict):
            raise ValueError("--extra must be a JSON object")
        size = parse_image_size(args.image_size) if args.image_size else None
        if args.requests_file is not None:
            return RequestSource(
                lines=load_request_file(args.requests_file),
                endpoint=args.endpoint,
                image_size=size,
                extra=extra,
                seed=args.seed,
            )
        return RequestSource(
            mixes=parse_mix_text(args.mix),
            endpoint=args.endpoint,
            image_size=size,
            extra=extra,
            seed=args.seed,
        )
    except (ValueError, OSError) as exc:
        raise InvalidRequest(str(exc)) from None


def _plan(args: argparse.Namespace) -> Plan:
    loop = Loop.OPEN if args.rate is not None else Loop.CLOSED
    default = OPEN_LOOP_IN_FLIGHT if loop is Loop.OPEN else 1
    try:
        return Plan(
            loop=loop,
            concurrency=args.concurrency or default,
            rate=args.rate,
            arrival=Arrival(args.arrival),
            requests=args.requests,
            duration_s=args.duration,
            warmup=args.warmup,
            drain_timeout_s=args.drain_timeout,
            seed=args.seed,
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def _client(target: Target) -> Any:
    fal_client = _import_fal_client()
    key = fal_key(target)
    if key is None:  # fal's service: let fal-client find credentials, but fail before the load
        try:
            fal_client.auth.fetch_auth_credentials()
        except fal_client.auth.MissingCredentialsError:
            raise ConfigError("fal's hosted service needs a key: export FAL_KEY=...") from None
    return fal_client.SyncClient(key=key)


def _settings(args: argparse.Namespace, plan: Plan, source: RequestSource) -> dict[str, Any]:
    return {
        "mode": args.mode,
        "loop": plan.loop.value,
        "concurrency": plan.concurrency,
        "rate": plan.rate,
        "arrival": plan.arrival.value if plan.loop is Loop.OPEN else None,
        "requests": plan.max_requests,
        "duration_s": plan.max_duration_s,
        "warmup": plan.warmup,
        "drain_timeout_s": plan.drain_timeout_s,
        "poll_interval_s": args.poll_interval,
        **source.describe(),
        "requests_file": str(args.requests_file) if args.requests_file else None,
    }


def cmd_run(args: argparse.Namespace) -> int:
    from service.loadtest.progress import Display

    target, source, plan = parse_target(args.target), _source(args), _plan(args)
    if not 0 < args.poll_interval <= 10:
        raise InvalidRequest("--poll-interval must be over 0 and at most 10 s")
    started = datetime.now(UTC)
    out = args.out or Path(f"loadtest-{started:%Y%m%d-%H%M%S}.json")
    label = args.label or ("fal" if target.hosted else target.run_url.split("://", 1)[1].strip("/"))
    sender = FalSender(_client(target), Mode(args.mode), poll_interval=args.poll_interval)
    display = Display()
    runner = Runner(plan, source, sender, cancel=sender.cancel, progress=display)
    with pointed_at(target), RetryCounter().installed():
        result = runner.run()
    display.close()
    document = results.build_document(
        result,
        label=label,
        target=target.to_json(),
        settings=_settings(args, plan, source),
        started_at=started,
    )
    results.write_document(out, document)
    loaded = results.load(out)
    written = [out]
    if not args.no_html:
        html = args.html or out.with_suffix(".html")
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(report.render(loaded))
        written.append(html)
    print(_summary_text(loaded))
    for path in written:
        print(f"wrote {path}")
    if args.compare is not None:
        try:
            print("\n" + compare.render(results.load(args.compare), loaded))
        except ValueError as exc:
            print(f"cannot compare: {exc}", file=sys.stderr)
    if result.interrupted:
        print("interrupted: the report holds the requests made so far", file=sys.stderr)
        return 130
    return 0 if loaded.summary["ok"] or not loaded.summary["requests"] else 1


def _summary_text(result: results.LoadedResult) -> str:
    s = result.summary
    lat = s["latency_s"]
    lines = [
        f"{result.label}: {s['ok']} ok, {s['errors']} errors, {s['dropped']} dropped, "
        f"{s['unfinished']} unfinished, {s['retries']} retries in {s['window_s']:.1f} s"
    ]
    if lat["n"]:
        lines.append(
            "latency (s): "
            + "  ".join(f"{k} {lat[k]:.3f}" for k in ("p50", "p90", "p95", "p99", "max"))
        )
    if s["queue_s"]["n"]:
        lines.append(
            f"time in queue (s): p50 {s['queue_s']['p50']:.3f}  p95 {s['queue_s']['p95']:.3f}"
        )
    rps, ips = s["requests_per_s"] or 0.0, s["images_per_s"] or 0.0
    rate = "-" if s["error_rate"] is None else f"{100 * s['error_rate']:.1f} %"
    lines.append(f"throughput: {rps:.3f} requests/s, {ips:.3f} images/s; error rate {rate}")
    for kind, count in s["errors_by_type"].items():
        lines.append(f"  error {kind}: {count}")
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        a, b = results.load(args.a), results.load(args.b)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    print(compare.render(a, b))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    try:
        loaded = results.load(args.result)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    html = args.html or args.result.with_suffix(".html")
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(report.render(loaded))
    print(f"wrote {html}")
    return 0
