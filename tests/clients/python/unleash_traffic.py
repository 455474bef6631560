#!/usr/bin/env python3
"""flagguard traffic against a real Unleash: UnleashClient + OpenFeature UnleashProvider + TracingHook.

Same trace shape and Resources as traffic.py (frontend -> checkout -> payments, one
TracerProvider per service and region, W3C traceparent between services), but the flag is
evaluated by the real Unleash Python SDK (PyPI `UnleashClient`) behind the real OpenFeature
provider (PyPI `openfeature-provider-unleash`), polling the server every second, so a kill done
through the Unleash admin API shows up in the telemetry after the SDK's refresh (the "drain").

Runs continuously at --rate requests per second until --duration has passed, the --stop-file
exists, or SIGTERM/SIGINT arrives; then flushes and prints one JSON summary line on stdout.

Scenario (always "regression"): a request's payments SERVER span fails (status ERROR) with
probability --error-rate only when the flag evaluated to true ("on"), and only in
--error-regions when given.

Evaluation context: targeting key `user-{n}` (n = i mod --users), attribute `region` = the
request's region (cycling through --regions, like the Resource's `cloud.region`). The provider
maps targeting_key -> Unleash `userId` and merges the attributes into the Unleash context;
UnleashClient moves every non-standard top-level field into `properties`, so a strategy
constraint on contextName `region` matches. (`userId` is what flexibleRollout's
stickiness "default" hashes.)

What TracingHook (openfeature-hooks-opentelemetry 0.3.1) records for this provider: the
provider's boolean resolution has NO variant (`variant=None`), so the `feature_flag.evaluation`
span event carries no `feature_flag.result.variant`; it has `feature_flag.result.value` =
`"true"` / `"false"` (a JSON-encoded string), `feature_flag.result.reason` = `targeting_match`
when enabled and `default` when disabled (also `default` for an unknown flag),
`feature_flag.provider.name` = `Unleash Provider`, `feature_flag.context.id` = `user-{n}`.
A receiver that falls back from result.variant to result.value therefore sees the variants
"true" and "false" (never "on"/"off"). This script's own counters call them "on"/"off".

Output:
  stderr, once a second: {"t": seconds since start, "ts": unix time, "on": n, "off": n,
      "errors": n, "on_by_region": {...}}  (counts of the last interval only)
  stdout, at the end: {"requests": N, "seconds": s, "by_variant": {"on","off"},
      "errors_by_variant": {"on","off"}, "by_region": {region: {"on","off"}},
      "first_on_unix", "last_on_unix", "last_on_unix_by_region": {...}, "exported_spans": n}
Exit status: 0; 1 if any OTLP export failed (or the flag is unknown to the SDK after the initial
fetch, unless --allow-missing-flag); 2 on bad arguments.

    target/test-clients/venv/bin/python tests/clients/python/unleash_traffic.py \\
      --endpoint http://127.0.0.1:4317 --protocol grpc \\
      --unleash-url "$UNLEASH_URL" --unleash-token "$UNLEASH_BACKEND_TOKEN" --flag checkout-v2 \\
      [--environment production] [--regions eu-west,us-east] [--error-rate 0.5] [--rate 50] \\
      [--duration SECONDS] [--stop-file PATH] [--users 1000] [--seed S] [--refresh-interval 1]

--protocol console prints the spans as JSON on stderr and --protocol none drops them (both for
debugging the SDK path without an OTLP receiver; --endpoint is then ignored).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from typing import Any, Optional, Sequence

from openfeature import api
from openfeature.contrib.hook.opentelemetry import TracingHook
from openfeature.contrib.provider.unleash import UnleashProvider
from openfeature.evaluation_context import EvaluationContext
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from UnleashClient.cache import BaseCache

# traffic.py sits next to this file (and so is on sys.path when this file is run as a script).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from traffic import MS, PROPAGATOR, SERVICES, CountingExporter, make_exporter  # noqa: E402

APP_NAME = "flagguard-unleash-traffic"


class MemoryCache(BaseCache):
    """In-memory cache for UnleashClient.

    The default FileCache persists the last fetched flags on disk (per app name) and the SDK
    falls back to them when the server is unreachable: a test run would then see the flags of
    an earlier run's (since recreated) Unleash database. Keep nothing between runs.
    """

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = value

    def mset(self, data: dict) -> None:
        with self._lock:
            self._data.update(data)

    def get(self, key: str, default: Optional[Any] = None) -> Any:
        with self._lock:
            return self._data.get(key, default)

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self._data

    def destroy(self) -> None:
        with self._lock:
            self._data.clear()


class DropExporter(SpanExporter):
    """--protocol none: accepts and forgets every span."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", default="", help="OTLP endpoint base, e.g. http://127.0.0.1:4317")
    p.add_argument("--protocol", required=True, choices=("grpc", "http", "console", "none"),
                   help="grpc = OTLP/gRPC (insecure); http = OTLP/HTTP protobuf to URL/v1/traces; "
                        "console = span JSON on stderr; none = drop spans")
    p.add_argument("--unleash-url", required=True, help="Unleash base URL, e.g. http://127.0.0.1:4242 (no /api)")
    p.add_argument("--unleash-token", required=True, help="backend (client) API token")
    p.add_argument("--flag", required=True, help="boolean flag key evaluated by checkout")
    p.add_argument("--environment", default="production",
                   help="UnleashClient `environment` (context field only; the token picks the flags' environment)")
    p.add_argument("--telemetry-environment", default="production",
                   help="deployment.environment.name of the spans (the Unleash environment is the token's)")
    p.add_argument("--regions", default="eu-west,us-east", help="comma-separated regions, cycled per request")
    p.add_argument("--error-rate", type=float, default=0.5)
    p.add_argument("--error-file", default=None,
                   help="inject the regression only while this file exists (default: always)")
    p.add_argument("--error-regions", default="",
                   help="comma-separated regions where the regression happens (default: every region)")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--stop-file", default=None, help="stop as soon as this path exists")
    p.add_argument("--users", type=int, default=1000, help="targeting keys user-0 .. user-(N-1), cycled")
    p.add_argument("--seed", type=int, default=None, help="seed for error/latency randomness")
    p.add_argument("--refresh-interval", type=int, default=1, help="UnleashClient poll interval, seconds")
    p.add_argument("--export-timeout", type=float, default=10.0, help="per-export timeout in seconds")
    p.add_argument("--allow-missing-flag", action="store_true",
                   help="do not fail when the flag is unknown to the SDK after the initial fetch")
    args = p.parse_args(argv)
    if args.protocol in ("grpc", "http") and not args.endpoint:
        p.error("--endpoint is required with --protocol grpc|http")
    if not 0.0 <= args.error_rate <= 1.0:
        p.error("--error-rate must be within [0, 1]")
    if args.rate <= 0:
        p.error("--rate must be > 0")
    if args.duration is not None and args.duration < 0:
        p.error("--duration must be >= 0")
    if args.users < 1:
        p.error("--users must be >= 1")
    if args.refresh_interval < 1:
        p.error("--refresh-interval must be >= 1")
    args.region_list = [r.strip() for r in args.regions.split(",") if r.strip()]
    args.error_region_set = {r.strip() for r in args.error_regions.split(",") if r.strip()}
    if not args.region_list:
        p.error("--regions must name at least one region")
    return args


def make_span_exporter(args: argparse.Namespace) -> SpanExporter:
    if args.protocol == "none":
        return DropExporter()
    if args.protocol == "console":
        return ConsoleSpanExporter(out=sys.stderr)
    return make_exporter(args.protocol, args.endpoint, args.export_timeout)


def api_url(url: str) -> str:
    """UnleashClient wants the API root (`…/api`), flagguard passes the server's base URL."""
    url = url.rstrip("/")
    return url if url.endswith("/api") else url + "/api"


def make_provider(args: argparse.Namespace) -> UnleashProvider:
    """The real UnleashProvider around the real UnleashClient, tuned for tests.

    UnleashProvider 0.1.2 only takes url/app_name/api_token/fetch_toggles/cache and builds its
    UnleashClient with the SDK defaults (15 s polling, metrics on, FileCache): the client's
    settings are changed through its public setters before initialize() reads them.
    """
    provider = UnleashProvider(
        url=api_url(args.unleash_url),
        app_name=APP_NAME,
        api_token=args.unleash_token,
        cache=MemoryCache(),
    )
    client = provider.client
    client.unleash_refresh_interval = args.refresh_interval
    client.unleash_disable_metrics = True
    client.unleash_environment = args.environment
    client.unleash_request_timeout = 5
    client.unleash_request_retries = 0
    return provider


def _drop_traceback(record: logging.LogRecord) -> bool:
    record.exc_info = None
    record.exc_text = None
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # UnleashClient logs every failed poll with a full traceback (once a second here when the
    # server is gone): keep its messages, drop the tracebacks.
    logging.getLogger("UnleashClient").addFilter(_drop_traceback)
    rng = random.Random(args.seed)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    exporters: list[CountingExporter] = []
    providers: list[TracerProvider] = []
    tracers: dict[tuple[str, str], trace.Tracer] = {}
    for region in args.region_list:
        for service in SERVICES:
            resource = Resource.create({
                "service.name": service,
                "service.version": "1.0.0",
                "deployment.environment.name": args.telemetry_environment,
                "cloud.region": region,
            })
            exporter = CountingExporter(make_span_exporter(args), f"{service}/{region}")
            provider = TracerProvider(resource=resource)
            provider.add_span_processor(BatchSpanProcessor(
                exporter, schedule_delay_millis=200, max_export_batch_size=512, max_queue_size=16384,
            ))
            exporters.append(exporter)
            providers.append(provider)
            tracers[(service, region)] = provider.get_tracer(f"flagguard-traffic.{service}", "1.0.0")

    unleash = make_provider(args)
    # openfeature-sdk 0.10: set_provider() initializes in a background thread; wait for it so
    # the first evaluations already see the fetched flags. (Do not also call
    # unleash.initialize(): a second initialize_client() only warns and does nothing.)
    api.set_provider_and_wait(unleash)
    api.add_hooks([TracingHook()])
    client = api.get_client("checkout")

    known = unleash.client.feature_definitions()
    if args.flag not in known:
        msg = (f"unleash_traffic.py: flag {args.flag!r} unknown to the SDK after the initial fetch "
               f"from {args.unleash_url} (known: {sorted(known)[:10]}); check the URL, token and flag")
        print(msg, file=sys.stderr, flush=True)
        if not args.allow_missing_flag:
            api.shutdown()
            return 1

    regions = args.region_list
    error_regions = args.error_region_set
    by_variant = {"on": 0, "off": 0}
    errors_by_variant = {"on": 0, "off": 0}
    by_region = {r: {"on": 0, "off": 0} for r in regions}
    last_on_by_region: dict[str, Optional[float]] = {r: None for r in regions}
    first_on: Optional[float] = None
    last_on: Optional[float] = None
    tick = {"on": 0, "off": 0, "errors": 0, "on_by_region": {r: 0 for r in regions}}

    started = time.monotonic()
    next_progress = started + 1.0
    interval = 1.0 / args.rate
    i = 0
    while True:
        now = time.monotonic()
        if now >= next_progress:
            print(json.dumps({"t": round(now - started, 3), "ts": round(time.time(), 3), **tick}),
                  file=sys.stderr, flush=True)
            tick = {"on": 0, "off": 0, "errors": 0, "on_by_region": {r: 0 for r in regions}}
            next_progress += 1.0
            if next_progress <= now:  # fell far behind: do not print a burst of catch-up lines
                next_progress = now + 1.0
        if stop.is_set():
            break
        if args.duration is not None and now - started >= args.duration:
            break
        if args.stop_file and os.path.exists(args.stop_file):
            break
        due = started + i * interval
        if now < due:
            stop.wait(min(due - now, max(0.0, next_progress - now)))
            continue

        region = regions[i % len(regions)]
        user = f"user-{i % args.users}"
        t_front, t_check, t_pay = (tracers[(s, region)] for s in SERVICES)

        fe_server = t_front.start_span(
            "GET /checkout", kind=SpanKind.SERVER,
            attributes={"http.request.method": "GET", "http.route": "/checkout",
                        "url.path": "/checkout", "enduser.id": user},
        )
        fe_ctx = trace.set_span_in_context(fe_server)
        fe_client = t_front.start_span(
            "POST /api/checkout", context=fe_ctx, kind=SpanKind.CLIENT,
            attributes={"http.request.method": "POST", "server.address": "checkout", "server.port": 8080},
        )
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(fe_client))

        # ---- checkout: remote parent; evaluates the flag through Unleash -------------------
        co_server = t_check.start_span(
            "POST /api/checkout", context=PROPAGATOR.extract(carrier), kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": "/api/checkout"},
        )
        with trace.use_span(co_server, end_on_exit=False):
            details = client.get_boolean_details(
                args.flag, False, EvaluationContext(targeting_key=user, attributes={"region": region})
            )
        variant = "on" if details.value else "off"
        wall = time.time()
        by_variant[variant] += 1
        by_region[region][variant] += 1
        tick[variant] += 1
        if variant == "on":
            tick["on_by_region"][region] += 1
            first_on = wall if first_on is None else first_on
            last_on = wall
            last_on_by_region[region] = wall

        failed = (
            variant == "on"
            and (not error_regions or region in error_regions)
            and (args.error_file is None or os.path.exists(args.error_file))
            and rng.random() < args.error_rate
        )

        co_ctx = trace.set_span_in_context(co_server)
        co_client = t_check.start_span(
            "POST /api/payments", context=co_ctx, kind=SpanKind.CLIENT,
            attributes={"http.request.method": "POST", "server.address": "payments", "server.port": 8080},
        )
        carrier = {}
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(co_client))

        # ---- payments ------------------------------------------------------------------------
        pay_server = t_pay.start_span(
            "POST /api/payments", context=PROPAGATOR.extract(carrier), kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": "/api/payments"},
        )
        pay_ms = rng.uniform(2.0, 6.0)
        if failed:
            errors_by_variant[variant] += 1
            tick["errors"] += 1
            pay_server.set_attribute("http.response.status_code", 500)
            pay_server.set_attribute("error.type", "500")
            pay_server.set_status(Status(StatusCode.ERROR, "payment authorization failed"))
        else:
            pay_server.set_attribute("http.response.status_code", 200)

        pay_end = pay_server.start_time + int(pay_ms * MS)
        pay_server.end(end_time=pay_end)
        co_client_end = pay_end + int(rng.uniform(0.2, 0.6) * MS)
        co_client.set_attribute("http.response.status_code", 500 if failed else 200)
        co_client.end(end_time=co_client_end)
        co_server.set_attribute("http.response.status_code", 202 if failed else 200)
        co_server_end = co_client_end + int(rng.uniform(0.5, 2.0) * MS)
        co_server.end(end_time=co_server_end)
        fe_client.set_attribute("http.response.status_code", 202 if failed else 200)
        fe_client_end = co_server_end + int(rng.uniform(0.2, 0.6) * MS)
        fe_client.end(end_time=fe_client_end)
        fe_server.set_attribute("http.response.status_code", 200)
        fe_server.end(end_time=fe_client_end + int(rng.uniform(0.5, 2.0) * MS))
        i += 1

    seconds = time.monotonic() - started
    api.shutdown()  # stops the Unleash client's polling
    flushed = True
    for provider in providers:
        flushed = provider.force_flush(timeout_millis=int(args.export_timeout * 1000) + 5000) and flushed
    for provider in providers:
        provider.shutdown()

    failures = sum(e.failures for e in exporters)
    exported = sum(e.spans_ok for e in exporters)
    expected_spans = 5 * i
    summary = {
        "requests": i,
        "seconds": round(seconds, 3),
        "by_variant": by_variant,
        "errors_by_variant": errors_by_variant,
        "by_region": by_region,
        "first_on_unix": first_on,
        "last_on_unix": last_on,
        "last_on_unix_by_region": last_on_by_region,
        "exported_spans": exported,
    }
    print(json.dumps(summary), flush=True)
    print(
        f"unleash_traffic.py: {i} requests in {seconds:.1f}s, {exported}/{expected_spans} spans exported, "
        f"{failures} failed export call(s)",
        file=sys.stderr,
    )
    if not flushed or failures or exported != expected_spans:
        print("unleash_traffic.py: EXPORT FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
