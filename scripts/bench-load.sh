#!/usr/bin/env bash
# The performance comparison (docs/performance.md): flagguard against a null OTLP receiver
# built from the same crates, side by side on this machine, over gRPC and over HTTP protobuf
# (the same receiver process serves both, measured one after the other), then detection latency under
# background load and window memory with N series. Prints a Markdown table.
#
#   scripts/bench-load.sh [SECONDS measured per throughput run, default 30, after 10 s of warm-up]
#
# Not part of the test suite (it takes a few minutes and wants an otherwise idle machine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_PER_RUN="${1:-30}"
cargo build --release --locked --bins >&2
BIN=target/release
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

field() { python3 -c "import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print('' if v is None else v)" "$1" "$2"; }

# --- null receiver
"$BIN/flagguard-load" null >"$WORK/null.out" 2>"$WORK/null.err" &
NULL_PID=$!; PIDS+=("$NULL_PID")
for _ in $(seq 100); do grep -q listening "$WORK/null.out" 2>/dev/null && break; sleep 0.1; done
NULL_ADDR="$(awk '/listening/ {print $2}' "$WORK/null.out")"
NULL_HTTP="$(awk '/listening/ {print $3}' "$WORK/null.out")"
NULL="$("$BIN/flagguard-load" drive "http://$NULL_ADDR" --pid "$NULL_PID" --warmup 10s --duration "${SECONDS_PER_RUN}s")"
NULL_H="$("$BIN/flagguard-load" drive "http://$NULL_HTTP" --http --pid "$NULL_PID" --warmup 10s --duration "${SECONDS_PER_RUN}s")"
kill "$NULL_PID"

# --- flagguard, doing all of its work: a rule guards the flag the load evaluates
mkdir -p "$WORK/rules"
cat >"$WORK/rules/r.yaml" <<'EOF'
rules:
  - name: checkout-v2-payments
    flag: checkout-v2
    treatment: "on"
    control: "off"
    where: { service: payments }
    when: [ { error_rate: { above: 0.5 } }, { latency: { quantile: 0.99, above_ms: 10000 } } ]
    window: 1m
    min_samples: 100
EOF
cat >"$WORK/flagguard.toml" <<EOF
data_dir = "$WORK/data"
rules_dir = "$WORK/rules"
[otlp]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
[api]
listen = "127.0.0.1:0"
[log]
format = "json"
level = "warn,flagguard=info"
EOF
"$BIN/flagguard" serve --config "$WORK/flagguard.toml" 2>"$WORK/fg.err" >/dev/null &
FG_PID=$!; PIDS+=("$FG_PID")
for _ in $(seq 100); do grep -q '"flagguard is running"' "$WORK/fg.err" 2>/dev/null && break; sleep 0.1; done
running() { python3 -c 'import json,sys
for l in open(sys.argv[1]):
    try: v=json.loads(l)
    except Exception: continue
    if v.get("message")=="flagguard is running": print(v[sys.argv[2]]); break' "$WORK/fg.err" "$1"; }
FG_GRPC="$(running grpc)"
FG_HTTP="$(running http)"
FG="$("$BIN/flagguard-load" drive "http://$FG_GRPC" --pid "$FG_PID" --warmup 10s --duration "${SECONDS_PER_RUN}s")"
FG_H="$("$BIN/flagguard-load" drive "http://$FG_HTTP" --http --pid "$FG_PID" --warmup 10s --duration "${SECONDS_PER_RUN}s")"
kill "$FG_PID"

# --- detection latency under background load: half of flagguard's measured capacity
CAP_RPS="$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d['requests_ok']/d['seconds'])" "$FG")"
BG_RPS="$(python3 -c "print(round(float('$CAP_RPS') * 0.5, 1))")"
DETECT="$("$BIN/flagguard-load" detect --flagguard "$BIN/flagguard" --background-rate "$BG_RPS" --probes 50)"

# --- memory: 10,000 series with an hour of history
MEM="$("$BIN/flagguard-load" memory --series 10000 --history 1h --every 1)"

python3 - "$NULL" "$FG" "$NULL_H" "$FG_H" "$DETECT" "$MEM" <<'EOF'
import json, os, platform, sys
null, fg, null_h, fg_h, det, mem = (json.loads(a) for a in sys.argv[1:])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"Machine: {os.cpu_count()} cores, {cpu}; {null['spans_per_request']} spans / {null['bytes_per_request']} bytes per request\n")
print("| | null receiver | flagguard | ratio |")
print("|---|---|---|---|")
r = lambda k: f"{fg[k] / null[k]:.2f}×" if fg.get(k) and null.get(k) else "–"
print(f"| **gRPC:** spans per CPU-second (receiver) | {null['spans_per_cpu_s']:,.0f} | {fg['spans_per_cpu_s']:,.0f} | **{r('spans_per_cpu_s')}** |")
print(f"| gRPC: spans/s (4 connections × 2 in flight) | {null['spans_per_s']:,.0f} | {fg['spans_per_s']:,.0f} | {r('spans_per_s')} |")
print(f"| requests refused (backpressure) | {null['requests_refused']} | {fg['requests_refused']} | |")
print(f"| receiver RSS at the end | {null['receiver_rss_bytes'] / 2**20:.0f} MiB | {fg['receiver_rss_bytes'] / 2**20:.0f} MiB | |")
rh = lambda k: f"{fg_h[k] / null_h[k]:.2f}×" if fg_h.get(k) and null_h.get(k) else "–"
print(f"| **HTTP protobuf:** spans per CPU-second (receiver) | {null_h['spans_per_cpu_s']:,.0f} | {fg_h['spans_per_cpu_s']:,.0f} | **{rh('spans_per_cpu_s')}** |")
print(f"| HTTP protobuf: spans/s (8 requests in flight, HTTP/1.1) | {null_h['spans_per_s']:,.0f} | {fg_h['spans_per_s']:,.0f} | {rh('spans_per_s')} |")
print(f"| HTTP protobuf: requests refused | {null_h['requests_refused']} | {fg_h['requests_refused']} | |")
print()
print(f"Detection (request completing a breach accepted → kill call received), {det['detected']} of {det['probes']} probes under {det['background_rps']} requests/s background: "
      f"**p50 {det['p50_ms']:.1f} ms, p99 {det['p99_ms']:.1f} ms** (max {det['max_ms']:.1f} ms).")
print()
print(f"Memory: {mem['series']:,} series × {mem['history_s'] // 60} min of history ({mem['requests']:,} requests): "
      f"**RSS {mem['rss_bytes'] / 2**20:.0f} MiB**, windows {mem['window_bytes'] / 2**20:.0f} MiB ({mem['bytes_per_series']:,} bytes per series).")
EOF
