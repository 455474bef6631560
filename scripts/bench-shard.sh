#!/usr/bin/env bash
# Scale-out benchmarks (docs/cluster.md, "Scale-out"), side by side in one run on this machine:
#   1. ingest per shard with delta streaming on vs off: spans per CPU-second of a plain instance
#      and of a shard with an evaluator subscribed, the same load (flagguard-load drive);
#   2. detection latency (evidence accepted → kill call received) embedded, in cluster mode on
#      PostgreSQL (a private one, scripts/setup-postgres.sh) and through two shards to an
#      evaluator (requests to the shards in turn, each request's traces on one);
#   3. the stream's bytes per changed series.
#
#   scripts/bench-shard.sh [SECONDS measured per throughput run, default 20, after 5 s warm-up]
#
# Not part of the test suite (a few minutes; wants an otherwise idle machine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_PER_RUN="${1:-20}"
cargo build --release --locked --bins >&2
BIN=target/release
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

running() { python3 -c 'import json,sys
for l in open(sys.argv[1]):
    try: v=json.loads(l)
    except Exception: continue
    if v.get("message")=="flagguard is running": print(v[sys.argv[2]]); break' "$1" "$2"; }
start() { # NAME CONFIG-EXTRA -> starts, waits, sets PID_NAME
  local name=$1 extra=$2
  mkdir -p "$WORK/$name/rules"
  printf 'data_dir = "%s"\nrules_dir = "%s"\n[otlp]\ngrpc_listen = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:0"\n[api]\nlisten = "127.0.0.1:0"\n[log]\nformat = "json"\nlevel = "warn,flagguard=info"\n%b' \
    "$WORK/$name/data" "$WORK/$name/rules" "$extra" >"$WORK/$name.toml"
  "$BIN/flagguard" serve --config "$WORK/$name.toml" 2>"$WORK/$name.err" >/dev/null &
  PIDS+=("$!"); eval "PID_$name=$!"
  for _ in $(seq 100); do grep -q '"flagguard is running"' "$WORK/$name.err" 2>/dev/null && break; sleep 0.1; done
}

start plain ""
PLAIN="$("$BIN/flagguard-load" drive "http://$(running "$WORK/plain.err" grpc)" --pid "$PID_plain" --warmup 5s --duration "${SECONDS_PER_RUN}s")"
kill "$PID_plain"

start shard '[shard]\nstream_listen = "127.0.0.1:0"\n'
start evaluator "[merge]\nshards = [\"http://$(running "$WORK/shard.err" stream)\"]\n"
SHARD="$("$BIN/flagguard-load" drive "http://$(running "$WORK/shard.err" grpc)" --pid "$PID_shard" --warmup 5s --duration "${SECONDS_PER_RUN}s")"
EVAL_CPU="$(awk '{print ($14 + $15) / 100}' "/proc/$PID_evaluator/stat")"
kill "$PID_shard" "$PID_evaluator"

(scripts/setup-postgres.sh start bench >&2)
PG_URL="$(scripts/setup-postgres.sh env bench | sed 's/^FLAGGUARD_TEST_PG_URL=//')"
DB="fgbench_$$"
psql -q "$PG_URL" -c "CREATE DATABASE $DB" >&2
DETECT=()
for t in embedded postgres sharded; do
  DETECT+=("$("$BIN/flagguard-load" detect --flagguard "$BIN/flagguard" --background-rate 382 --probes 200 --topology "$t" --postgres "${PG_URL%/postgres}/$DB")")
done
psql -q "$PG_URL" -c "DROP DATABASE $DB" >&2 || true
BYTES1="$("$BIN/flagguard-load" stream-bytes --series 10000 --requests 1)"
BYTES5="$("$BIN/flagguard-load" stream-bytes --series 10000 --requests 5)"

python3 - "$PLAIN" "$SHARD" "$EVAL_CPU" "$BYTES1" "$BYTES5" "${DETECT[@]}" <<'EOF'
import json, sys
plain, shard = json.loads(sys.argv[1]), json.loads(sys.argv[2])
eval_cpu = float(sys.argv[3])
b1, b5 = json.loads(sys.argv[4]), json.loads(sys.argv[5])
det = [json.loads(a) for a in sys.argv[6:]]
print("| ingest over gRPC | plain instance | shard streaming to an evaluator | ratio |")
print("|---|---|---|---|")
print(f"| spans per CPU-second (receiver) | {plain['spans_per_cpu_s']:,.0f} | {shard['spans_per_cpu_s']:,.0f} | **{shard['spans_per_cpu_s'] / plain['spans_per_cpu_s']:.2f}×** |")
print(f"| spans/s | {plain['spans_per_s']:,.0f} | {shard['spans_per_s']:,.0f} | {shard['spans_per_s'] / plain['spans_per_s']:.2f}× |")
print(f"\nThe evaluator used {eval_cpu:.1f} CPU-seconds over the shard's run.\n")
print("| detection, 200 probes at 382 requests/s | p50 | p99 | max |")
print("|---|---|---|---|")
for d in det:
    print(f"| {d['topology']} | {d['p50_ms']:.1f} ms | {d['p99_ms']:.1f} ms | {d['max_ms']:.1f} ms |")
print(f"\nStream: {b1['bytes_per_changed_series']:.0f} bytes per changed series per frame with 1 request in the frame, "
      f"{b5['bytes_per_changed_series']:.0f} with 5; at 40 frames/s a series that changes in every frame costs "
      f"{b1['bytes_per_second_per_changed_series'] / 1000:.1f}–{b5['bytes_per_second_per_changed_series'] / 1000:.1f} kB/s.")
EOF
