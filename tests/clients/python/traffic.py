#!/usr/bin/env python3
"""flagguard traffic generator: real OpenTelemetry Python SDK + real OpenFeature TracingHook.

One trace per simulated request, three services, each with its own TracerProvider/Resource:

    frontend  SERVER "GET /checkout"            (root)
      frontend  CLIENT "POST /api/checkout"     --W3C traceparent (dict carrier)-->
        checkout  SERVER "POST /api/checkout"   (remote parent; evaluates FLAGKEY here,
                                                 TracingHook adds a `feature_flag.evaluation`
                                                 span event to this span)
          checkout  CLIENT "POST /api/payments" --W3C traceparent-->
            payments  SERVER "POST /api/payments"  (the only span that is ever status ERROR)

Scenarios (which payments requests fail, each with probability --error-rate):
    regression  only requests whose checkout got variant "on"
    healthy     none
    outage      all requests, whatever the variant

Prints one JSON summary line on stdout; exits 1 if any OTLP export failed.
See tests/clients/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
import threading
import time
from typing import Sequence

from openfeature import api
from openfeature.contrib.hook.opentelemetry import TracingHook
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SERVICES = ("frontend", "checkout", "payments")
MS = 1_000_000  # nanoseconds per millisecond

PROPAGATOR = TraceContextTextMapPropagator()


class CountingExporter(SpanExporter):
    """Wraps a real OTLP exporter and remembers every failed export call."""

    def __init__(self, inner: SpanExporter, label: str) -> None:
        self._inner = inner
        self._label = label
        self._lock = threading.Lock()
        self.calls = 0
        self.failures = 0
        self.spans_ok = 0
        self.spans_failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # the processor would only log it
            logging.getLogger("traffic").error("export to %s raised: %r", self._label, exc)
            result = SpanExportResult.FAILURE
        with self._lock:
            self.calls += 1
            if result == SpanExportResult.SUCCESS:
                self.spans_ok += len(spans)
            else:
                self.failures += 1
                self.spans_failed += len(spans)
        return result

    # BatchSpanProcessor inspects the argument names of shutdown() to pass the remaining timeout.
    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        try:
            self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)
        except TypeError:
            self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


def make_exporter(protocol: str, endpoint: str, timeout_s: float) -> SpanExporter:
    endpoint = endpoint.rstrip("/")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=timeout_s)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=timeout_s)


def bucket_on(flag_key: str, targeting_key: str) -> bool:
    """Deterministic ~50/50 split on (flag key, targeting key)."""
    digest = hashlib.sha256(f"{flag_key}/{targeting_key}".encode()).digest()
    return digest[0] < 128


def make_flag(flag_key: str) -> InMemoryFlag:
    def evaluator(flag: InMemoryFlag, ctx: EvaluationContext) -> FlagResolutionDetails:
        if not ctx.targeting_key:
            return FlagResolutionDetails(
                value=flag.variants[flag.default_variant],
                variant=flag.default_variant,
                reason=Reason.DEFAULT,
            )
        variant = "on" if bucket_on(flag_key, ctx.targeting_key) else "off"
        return FlagResolutionDetails(
            value=flag.variants[variant], variant=variant, reason=Reason.SPLIT
        )

    return InMemoryFlag(
        default_variant="off",
        variants={"on": True, "off": False},
        context_evaluator=evaluator,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True, help="OTLP endpoint base, e.g. http://127.0.0.1:4317")
    p.add_argument("--protocol", required=True, choices=("grpc", "http"),
                   help="grpc = OTLP/gRPC (insecure); http = OTLP/HTTP protobuf to URL/v1/traces")
    p.add_argument("--scenario", required=True, choices=("regression", "healthy", "outage"))
    p.add_argument("--flag", required=True, help="boolean flag key evaluated by checkout")
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--seed", type=int, default=None, help="seed for error/latency randomness")
    p.add_argument("--error-rate", type=float, default=0.5)
    p.add_argument("--regions", default="eu-west,us-east", help="comma-separated cloud.region values, cycled")
    p.add_argument("--slow-ms", type=float, default=0.0,
                   help="extra payments latency (ms) on every request the scenario affects (default 0)")
    p.add_argument("--export-timeout", type=float, default=10.0, help="per-export timeout in seconds")
    args = p.parse_args(argv)
    if args.requests < 0:
        p.error("--requests must be >= 0")
    if not 0.0 <= args.error_rate <= 1.0:
        p.error("--error-rate must be within [0, 1]")
    args.region_list = [r.strip() for r in args.regions.split(",") if r.strip()]
    if not args.region_list:
        p.error("--regions must name at least one region")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    rng = random.Random(args.seed)

    # One TracerProvider (and exporter) per (service, region): a Resource is fixed per provider.
    exporters: list[CountingExporter] = []
    providers: list[TracerProvider] = []
    tracers: dict[tuple[str, str], trace.Tracer] = {}
    for region in args.region_list:
        for service in SERVICES:
            resource = Resource.create({
                "service.name": service,
                "service.version": "1.0.0",
                "deployment.environment.name": "production",
                "cloud.region": region,
            })
            exporter = CountingExporter(
                make_exporter(args.protocol, args.endpoint, args.export_timeout), f"{service}/{region}"
            )
            provider = TracerProvider(resource=resource)
            provider.add_span_processor(BatchSpanProcessor(
                exporter,
                schedule_delay_millis=200,
                max_export_batch_size=512,
                max_queue_size=max(2048, 2 * args.requests + 1024),
            ))
            exporters.append(exporter)
            providers.append(provider)
            tracers[(service, region)] = provider.get_tracer(f"flagguard-traffic.{service}", "1.0.0")

    api.set_provider(InMemoryProvider({args.flag: make_flag(args.flag)}))
    api.add_hooks([TracingHook()])
    client = api.get_client("checkout")

    by_variant = {"on": 0, "off": 0}
    errors_by_variant = {"on": 0, "off": 0}
    started = time.monotonic()

    for i in range(args.requests):
        region = args.region_list[i % len(args.region_list)]
        user = f"user-{i}"
        t_front, t_check, t_pay = (tracers[(s, region)] for s in SERVICES)

        # Start times come from the real clock (so the hook's event timestamp, also real, falls
        # inside checkout's span); end times are simulated durations stacked bottom-up.
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

        # ---- checkout: remote parent from the carrier -------------------------------------
        co_server = t_check.start_span(
            "POST /api/checkout", context=PROPAGATOR.extract(carrier), kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": "/api/checkout"},
        )
        with trace.use_span(co_server, end_on_exit=False):
            details = client.get_boolean_details(
                args.flag, False, EvaluationContext(targeting_key=user)
            )
        variant = details.variant if details.variant in by_variant else ("on" if details.value else "off")
        by_variant[variant] += 1

        affected = args.scenario == "outage" or (args.scenario == "regression" and variant == "on")
        failed = affected and rng.random() < args.error_rate

        co_ctx = trace.set_span_in_context(co_server)
        co_client = t_check.start_span(
            "POST /api/payments", context=co_ctx, kind=SpanKind.CLIENT,
            attributes={"http.request.method": "POST", "server.address": "payments", "server.port": 8080},
        )
        carrier = {}
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(co_client))

        # ---- payments ----------------------------------------------------------------------
        pay_server = t_pay.start_span(
            "POST /api/payments", context=PROPAGATOR.extract(carrier), kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": "/api/payments"},
        )
        pay_ms = rng.uniform(2.0, 6.0) + (args.slow_ms if affected else 0.0)
        if failed:
            errors_by_variant[variant] += 1
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
        # checkout tolerates a failed payment (order queued for retry) and answers 202.
        co_server.set_attribute("http.response.status_code", 202 if failed else 200)
        co_server_end = co_client_end + int(rng.uniform(0.5, 2.0) * MS)
        co_server.end(end_time=co_server_end)
        fe_client.set_attribute("http.response.status_code", 202 if failed else 200)
        fe_client_end = co_server_end + int(rng.uniform(0.2, 0.6) * MS)
        fe_client.end(end_time=fe_client_end)
        fe_server.set_attribute("http.response.status_code", 200)
        fe_server.end(end_time=fe_client_end + int(rng.uniform(0.5, 2.0) * MS))

    flushed = True
    for provider in providers:
        flushed = provider.force_flush(timeout_millis=int(args.export_timeout * 1000) + 5000) and flushed
    for provider in providers:
        provider.shutdown()
    api.shutdown()

    failures = sum(e.failures for e in exporters)
    exported = sum(e.spans_ok for e in exporters)
    expected_spans = 5 * args.requests
    summary = {
        "requests": args.requests,
        "by_variant": by_variant,
        "errors_by_variant": errors_by_variant,
    }
    print(json.dumps(summary), flush=True)
    print(
        f"traffic.py: {args.requests} requests, {exported}/{expected_spans} spans exported, "
        f"{failures} failed export call(s), {time.monotonic() - started:.2f}s",
        file=sys.stderr,
    )
    if not flushed or failures or exported != expected_spans:
        print("traffic.py: EXPORT FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
