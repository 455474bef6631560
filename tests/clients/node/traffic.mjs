#!/usr/bin/env node
// flagguard traffic generator: real OpenTelemetry JS SDK + real @openfeature/open-telemetry-hooks.
//
// One trace per simulated request, two services, each with its own TracerProvider/Resource:
//
//   checkout SERVER "POST /api/checkout"  (root; evaluates FLAGKEY while it is the active span)
//     payments SERVER "POST /api/payments" (parent = checkout's span, passed as a W3C traceparent;
//                                            the only span that is ever status ERROR)
//
//   --hook event : EventHook   -> one OTLP log record per evaluation, eventName
//                                 "feature_flag.evaluation", trace/span id of checkout's span,
//                                 sent to URL/v1/logs (OTLP/HTTP JSON)
//   --hook span  : SpanHook    -> one child span "feature_flag.evaluation" of checkout's span,
//                                 flag data in its attributes
// Traces always go to URL/v1/traces (OTLP/HTTP JSON).
//
// Scenarios (which payments requests fail, each with probability --error-rate):
//   regression  only requests whose checkout got variant "on"
//   healthy     none
//   outage      all requests, whatever the variant
//
// Prints one JSON summary line on stdout; exits 1 if any OTLP export failed. See ../README.md.

import { createHash } from 'node:crypto';
import { parseArgs } from 'node:util';

import { context, createContextKey, diag, DiagConsoleLogger, DiagLogLevel, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { logs } from '@opentelemetry/api-logs';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { ExportResultCode, W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPLogExporter } from '@opentelemetry/exporter-logs-otlp-http';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { defaultResource, resourceFromAttributes } from '@opentelemetry/resources';
import { BatchLogRecordProcessor, LoggerProvider } from '@opentelemetry/sdk-logs';
import { BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { EventHook, SpanHook } from '@openfeature/open-telemetry-hooks';
import { InMemoryProvider, OpenFeature } from '@openfeature/server-sdk';

const USAGE = `usage: traffic.mjs --endpoint http://127.0.0.1:PORT --hook event|span
       --scenario regression|healthy|outage --flag FLAGKEY
       [--requests N (400)] [--error-rate P (0.5)] [--seed S]
       [--regions eu-west,us-east] [--slow-ms MS (0)] [--export-timeout SECONDS (10)]`;

function fail(msg) {
  process.stderr.write(`traffic.mjs: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      endpoint: { type: 'string' },
      hook: { type: 'string' },
      scenario: { type: 'string' },
      flag: { type: 'string' },
      requests: { type: 'string', default: '400' },
      'error-rate': { type: 'string', default: '0.5' },
      seed: { type: 'string' },
      regions: { type: 'string', default: 'eu-west,us-east' },
      'slow-ms': { type: 'string', default: '0' },
      'export-timeout': { type: 'string', default: '10' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  }));
} catch (e) {
  fail(e.message);
}
if (opts.help) {
  process.stdout.write(USAGE + '\n');
  process.exit(0);
}
for (const k of ['endpoint', 'hook', 'scenario', 'flag']) if (!opts[k]) fail(`--${k} is required`);
if (!['event', 'span'].includes(opts.hook)) fail('--hook must be event or span');
if (!['regression', 'healthy', 'outage'].includes(opts.scenario)) fail('--scenario must be regression, healthy or outage');
const REQUESTS = Number(opts.requests);
const ERROR_RATE = Number(opts['error-rate']);
const SLOW_MS = Number(opts['slow-ms']);
const EXPORT_TIMEOUT_MS = Number(opts['export-timeout']) * 1000;
if (!Number.isInteger(REQUESTS) || REQUESTS < 0) fail('--requests must be a non-negative integer');
if (!(ERROR_RATE >= 0 && ERROR_RATE <= 1)) fail('--error-rate must be within [0, 1]');
if (!(SLOW_MS >= 0)) fail('--slow-ms must be >= 0');
if (!(EXPORT_TIMEOUT_MS > 0)) fail('--export-timeout must be > 0');
const REGIONS = opts.regions.split(',').map((r) => r.trim()).filter(Boolean);
if (REGIONS.length === 0) fail('--regions must name at least one region');
const ENDPOINT = opts.endpoint.replace(/\/+$/, '');
const FLAG = opts.flag;

// Seeded PRNG (mulberry32) when --seed is given, Math.random otherwise.
const random = (() => {
  if (opts.seed === undefined) return Math.random;
  let a = Number(opts.seed) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
})();
const uniform = (lo, hi) => lo + (hi - lo) * random();

diag.setLogger(new DiagConsoleLogger(), DiagLogLevel.WARN); // console.warn/error -> stderr

// ---------------------------------------------------------------------------------------------
// Export bookkeeping: wrap every real exporter and count failed export calls.
const stats = { failedCalls: 0, spansOk: 0, logsOk: 0, errors: [] };

class CountingExporter {
  constructor(inner, kind) {
    this.inner = inner;
    this.kind = kind;
  }
  export(items, resultCallback) {
    this.inner.export(items, (result) => {
      if (result.code === ExportResultCode.SUCCESS) {
        if (this.kind === 'spans') stats.spansOk += items.length;
        else stats.logsOk += items.length;
      } else {
        stats.failedCalls += 1;
        stats.errors.push(`${this.kind}: ${result.error?.message ?? 'export failed'}`);
      }
      resultCallback(result);
    });
  }
  shutdown() {
    return this.inner.shutdown();
  }
  forceFlush() {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }
}

const batchOpts = {
  scheduledDelayMillis: 200, // NB: the exact spelling matters; a typo is silently ignored (5 s)
  maxExportBatchSize: 512,
  maxQueueSize: Math.max(2048, 2 * REQUESTS + 1024),
  exportTimeoutMillis: EXPORT_TIMEOUT_MS,
};

function resource(service, region) {
  // defaultResource(): telemetry.sdk.{name,language,version}, as the NodeSDK would add.
  return defaultResource().merge(resourceFromAttributes({
    'service.name': service,
    'service.version': '1.0.0',
    'deployment.environment.name': 'production',
    'cloud.region': region,
  }));
}

function tracerProvider(service, region) {
  const exporter = new CountingExporter(
    new OTLPTraceExporter({ url: `${ENDPOINT}/v1/traces`, timeoutMillis: EXPORT_TIMEOUT_MS }),
    'spans',
  );
  return new BasicTracerProvider({
    resource: resource(service, region),
    spanProcessors: [new BatchSpanProcessor(exporter, batchOpts)],
  });
}

// A Resource is fixed per provider, so there is one provider per (service, region).
const tracerProviders = [];
const loggerProviders = [];
const byRegion = new Map();
for (const region of REGIONS) {
  const checkout = tracerProvider('checkout', region);
  const payments = tracerProvider('payments', region);
  tracerProviders.push(checkout, payments);
  let checkoutLogs = null;
  if (opts.hook === 'event') {
    const exporter = new CountingExporter(
      new OTLPLogExporter({ url: `${ENDPOINT}/v1/logs`, timeoutMillis: EXPORT_TIMEOUT_MS }),
      'logs',
    );
    checkoutLogs = new LoggerProvider({
      resource: resource('checkout', region),
      processors: [new BatchLogRecordProcessor(exporter, batchOpts)],
    });
    loggerProviders.push(checkoutLogs);
  }
  byRegion.set(region, {
    checkout: checkout.getTracer('flagguard-traffic.checkout', '1.0.0'),
    payments: payments.getTracer('flagguard-traffic.payments', '1.0.0'),
    checkoutProvider: checkout,
    checkoutLogs,
  });
}

// The hooks use the *global* tracer/logger providers (SpanHook: trace.getTracer at import time,
// EventHook: logs.getLogger). The globals below route to checkout's provider for the region of
// the request in the active context, so the hook's telemetry carries checkout's Resource.
const REGION_KEY = createContextKey('flagguard-traffic.region');
const regionOf = (ctx) => byRegion.get((ctx ?? context.active()).getValue(REGION_KEY) ?? REGIONS[0]);

const routingTracerProvider = {
  getTracer(name, version, options) {
    const tracerFor = (ctx) => regionOf(ctx).checkoutProvider.getTracer(name, version, options);
    return {
      startSpan: (spanName, spanOpts, ctx) => tracerFor(ctx).startSpan(spanName, spanOpts, ctx),
      startActiveSpan: (...args) => tracerFor(undefined).startActiveSpan(...args),
    };
  },
};
const routingLoggerProvider = {
  getLogger(name, version, options) {
    return {
      emit(record) {
        const ctx = record.context ?? context.active();
        regionOf(ctx).checkoutLogs?.getLogger(name, version, options).emit(record);
      },
    };
  },
};

context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
propagation.setGlobalPropagator(new W3CTraceContextPropagator());
trace.setGlobalTracerProvider(routingTracerProvider);
if (opts.hook === 'event') logs.setGlobalLoggerProvider(routingLoggerProvider);

// ---------------------------------------------------------------------------------------------
// OpenFeature: boolean flag, ~50 % "on", decided deterministically from the targeting key.
const bucketOn = (targetingKey) => createHash('sha256').update(`${FLAG}/${targetingKey}`).digest()[0] < 128;

await OpenFeature.setProviderAndWait(
  new InMemoryProvider({
    [FLAG]: {
      variants: { on: true, off: false },
      defaultVariant: 'off',
      disabled: false,
      contextEvaluator: (ctx) => (ctx.targetingKey ? (bucketOn(ctx.targetingKey) ? 'on' : 'off') : 'off'),
    },
  }),
);
OpenFeature.addHooks(opts.hook === 'event' ? new EventHook() : new SpanHook());
const client = OpenFeature.getClient('checkout');

// ---------------------------------------------------------------------------------------------
const MS = 1_000_000n;
const toNs = ([s, ns]) => BigInt(s) * 1_000_000_000n + BigInt(ns);
const toHr = (n) => [Number(n / 1_000_000_000n), Number(n % 1_000_000_000n)];
const plusMs = (ns, ms) => ns + (BigInt(Math.round(ms * 1000)) * MS) / 1000n;

const byVariant = { on: 0, off: 0 };
const errorsByVariant = { on: 0, off: 0 };
const started = performance.now();

// Runs with checkout's SERVER span active (AsyncLocalStorage), as a request handler would.
async function checkoutHandler(user, carrierOut) {
  const details = await client.getBooleanDetails(FLAG, false, { targetingKey: user });
  const variant = details.variant === 'on' || details.variant === 'off' ? details.variant : details.value ? 'on' : 'off';
  propagation.inject(context.active(), carrierOut); // checkout -> payments call
  return variant;
}

for (let i = 0; i < REQUESTS; i++) {
  const region = REGIONS[i % REGIONS.length];
  const tracers = byRegion.get(region);
  const user = `user-${i}`;
  const reqCtx = ROOT_CONTEXT.setValue(REGION_KEY, region);

  // Start times come from the real clock (so the hook's own timestamps fall inside checkout's
  // span); end times are simulated durations stacked bottom-up.
  const coSpan = tracers.checkout.startSpan(
    'POST /api/checkout',
    { kind: SpanKind.SERVER, attributes: { 'http.request.method': 'POST', 'http.route': '/api/checkout', 'enduser.id': user } },
    reqCtx,
  );
  const carrier = {};
  const variant = await context.with(trace.setSpan(reqCtx, coSpan), () => checkoutHandler(user, carrier));
  byVariant[variant] += 1;
  const affected = opts.scenario === 'outage' || (opts.scenario === 'regression' && variant === 'on');
  const failed = affected && random() < ERROR_RATE;

  const payCtx = propagation.extract(ROOT_CONTEXT.setValue(REGION_KEY, region), carrier);
  const paySpan = tracers.payments.startSpan(
    'POST /api/payments',
    { kind: SpanKind.SERVER, attributes: { 'http.request.method': 'POST', 'http.route': '/api/payments' } },
    payCtx,
  );
  if (failed) {
    errorsByVariant[variant] += 1;
    paySpan.setAttributes({ 'http.response.status_code': 500, 'error.type': '500' });
    paySpan.setStatus({ code: SpanStatusCode.ERROR, message: 'payment authorization failed' });
  } else {
    paySpan.setAttribute('http.response.status_code', 200);
  }
  const payEnd = plusMs(toNs(paySpan.startTime), uniform(2, 6) + (affected ? SLOW_MS : 0));
  paySpan.end(toHr(payEnd));
  // checkout tolerates a failed payment (order queued for retry) and answers 202.
  coSpan.setAttribute('http.response.status_code', failed ? 202 : 200);
  coSpan.end(toHr(plusMs(payEnd, uniform(0.5, 2))));
}

// ---------------------------------------------------------------------------------------------
let flushFailed = false;
for (const p of [...tracerProviders, ...loggerProviders]) {
  try {
    await p.forceFlush();
  } catch (e) {
    flushFailed = true;
    stats.errors.push(`forceFlush: ${e?.message ?? e}`);
  }
}
for (const p of [...tracerProviders, ...loggerProviders]) {
  try {
    await p.shutdown();
  } catch (e) {
    flushFailed = true;
    stats.errors.push(`shutdown: ${e?.message ?? e}`);
  }
}
await OpenFeature.close();

const expectedSpans = REQUESTS * (opts.hook === 'span' ? 3 : 2);
const expectedLogs = opts.hook === 'event' ? REQUESTS : 0;
process.stdout.write(JSON.stringify({ requests: REQUESTS, by_variant: byVariant, errors_by_variant: errorsByVariant }) + '\n');
process.stderr.write(
  `traffic.mjs: ${REQUESTS} requests, ${stats.spansOk}/${expectedSpans} spans and ${stats.logsOk}/${expectedLogs} ` +
    `log records exported, ${stats.failedCalls} failed export call(s), ${((performance.now() - started) / 1000).toFixed(2)}s\n`,
);
const ok = !flushFailed && stats.failedCalls === 0 && stats.spansOk === expectedSpans && stats.logsOk === expectedLogs;
if (!ok) {
  for (const e of [...new Set(stats.errors)].slice(0, 5)) process.stderr.write(`traffic.mjs: ${e}\n`);
  process.stderr.write('traffic.mjs: EXPORT FAILED\n');
}
process.exitCode = ok ? 0 : 1;
