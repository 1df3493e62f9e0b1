#!/usr/bin/env bash
# The whole benchmark in one command: chatwire, the NestJS peer and the raw WebSocket
# ceiling, side by side, with the same load generator and the same mock upstream.
#
#   bench/run.sh            full sizes (10,000 idle connections, 1,000 streams, ...)
#   bench/run.sh --quick    the same at small sizes, in under 4 minutes
#   bench/run.sh --cluster  the stream scenario on one node and on three nodes behind
#                           nginx, per node (bench/cluster.sh; with --quick, smaller)
#
# Options: --servers chatwire,nestjs,ceiling   --scenarios idle,storm,stream,saturate,overload,ttft,cpu
# Each scenario starts every server afresh (new database), in an order that rotates from
# one scenario to the next. Prints a markdown table, writes bench/results/latest.json,
# and ends with the line
#   ratios: tokens_per_s=A rss_per_conn=B lag_p99=C ttft_p99=D cpu_per_token=E
# (how many times better chatwire is than the NestJS peer; above 1, chatwire wins).
# The headline `cpu` scenario is server CPU per delivered token at one fixed load below
# every server's saturation (CPU_CLIENTS x RATE tokens/s, the same in both modes).
# CHATWIRE_ENV="OVERLOAD_LAG_MS=50 ..." adds settings to chatwire's environment (to try a
# threshold, say). Binaries come from $CARGO_TARGET_DIR (default target/)/release; BUILD_NICE=10 builds
# them at a lower priority. Every process it starts listens on 127.0.0.1 only and is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=full
SERVERS=chatwire,nestjs,ceiling
SCENARIOS=idle,storm,stream,saturate,overload,ttft,cpu
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --cluster) CLUSTER=1 ;;
    --servers) SERVERS=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [ -n "${CLUSTER:-}" ]; then MODE=$MODE exec bench/cluster.sh; fi

# Sizes. Any of them can be overridden from the environment.
if [ "$MODE" = quick ]; then
  : "${IDLE_N:=1000}" "${STREAM_CLIENTS:=100}" "${TOKENS:=50}" "${RATE:=50}" "${STREAM_S:=4}"
  : "${SAT_START:=50}" "${SAT_FACTOR:=2}" "${SAT_MAX:=1600}" "${SAT_S:=2}"
  : "${TTFT_RATE:=50}" "${TTFT_S:=3}" "${SETTLE_MS:=1000}" "${HOLD_MS:=300}" "${PAUSE_MS:=1000}"
  : "${STORM_N:=1000}" "${STORM_STREAMS:=50}" "${STORM_S:=8}"
else
  : "${IDLE_N:=10000}" "${STREAM_CLIENTS:=1000}" "${TOKENS:=200}" "${RATE:=50}" "${STREAM_S:=30}"
  : "${SAT_START:=100}" "${SAT_FACTOR:=1.5}" "${SAT_MAX:=9000}" "${SAT_S:=10}"
  : "${TTFT_RATE:=100}" "${TTFT_S:=20}" "${SETTLE_MS:=3000}" "${HOLD_MS:=2000}" "${PAUSE_MS:=2000}"
  : "${STORM_N:=10000}" "${STORM_STREAMS:=200}" "${STORM_S:=15}"
fi
# The cpu scenario's fixed load is the same in both modes, so quick and full runs give
# the same figure: 100 clients x RATE (50 tok/s) = 5,000 tokens/s, 200 tokens/answer, under
# half of the NestJS peer's saturation (about 11,000 tokens/s on the 2-core machine of
# docs/BENCHMARKS.md) and a fifth of chatwire's. Only the window is shorter in --quick.
: "${CPU_CLIENTS:=100}" "${CPU_TOKENS:=200}"
if [ "$MODE" = quick ]; then : "${CPU_S:=8}"; else : "${CPU_S:=30}"; fi
: "${FIRST_TOKEN_DELAY_MS:=0}" "${THRESHOLD_MS:=100}" "${MIN_DELIVERY:=0.9}"
TOKEN_DELAY_MS=$((1000 / RATE))
SECRET="bench-$(date +%s)-$RANDOM"

# Every socket is a file descriptor on both ends; children inherit the limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

T0=$(date +%s)
say() { printf '\n==> [%ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/chatwire-bench.XXXXXX")
RESULTS=$WORK/results
mkdir -p "$RESULTS" bench/results
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${KEEP_WORK:-}" ]; then echo "work files kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building release binaries"
nice -n "${BUILD_NICE:-0}" cargo build --release -p chatwire -p loadgen >&2
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
CHATWIRE=$TARGET_DIR/release/chatwire
LOADGEN=$TARGET_DIR/release/loadgen

# The NestJS peer: installed from its lock file and built; skipped, with a note, when
# that is not possible here.
PEER_DIR=$ROOT/bench/peers/nestjs
PEER_NOTE=""
if [[ ",$SERVERS," == *",nestjs,"* ]]; then
  if [ ! -f "$PEER_DIR/package.json" ]; then
    PEER_NOTE="bench/peers/nestjs is missing"
  elif ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    PEER_NOTE="node/npm not installed"
  else
    say "NestJS peer: npm ci && npm run build"
    # npm ci wipes node_modules; skip it when the installed tree matches the lock file.
    if [ -n "${PEER_FRESH:-}" ] || [ ! -f "$PEER_DIR/node_modules/.package-lock.json" ] ||
       [ "$PEER_DIR/package-lock.json" -nt "$PEER_DIR/node_modules/.package-lock.json" ]; then
      (cd "$PEER_DIR" && npm ci --no-audit --no-fund --loglevel=error) >&2 || PEER_NOTE="npm ci failed"
    else
      echo "node_modules is up to date with package-lock.json (PEER_FRESH=1 forces npm ci)" >&2
    fi
    if [ -z "$PEER_NOTE" ]; then
      (cd "$PEER_DIR" && npm run build --silent) >&2 || PEER_NOTE="npm run build failed"
    fi
    if [ -z "$PEER_NOTE" ] && [ ! -f "$PEER_DIR/dist/main.js" ]; then
      PEER_NOTE="bench/peers/nestjs/dist/main.js is missing after the build"
    fi
  fi
  if [ -n "$PEER_NOTE" ]; then
    echo "NOTE: skipping the NestJS peer: $PEER_NOTE" >&2
    SERVERS=$(echo ",$SERVERS," | sed 's/,nestjs,/,/; s/^,//; s/,$//')
  fi
fi
IFS=, read -r -a SERVER_LIST <<<"$SERVERS"
IFS=, read -r -a SCENARIO_LIST <<<"$SCENARIOS"

free_port() { "$LOADGEN" free-port; }

wait_port() { # pid port what
  for _ in $(seq 1 600); do
    if ! kill -0 "$1" 2>/dev/null; then echo "$3 exited during start-up" >&2; return 1; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$3 did not listen on port $2 within 60 s" >&2
  return 1
}

# A clean environment for every server: no stray settings from the caller or a .env.
base_env=(env -i "PATH=$PATH" "HOME=${HOME:-/root}" "LANG=C.UTF-8")

say "mock upstream (stamp mode, ${TOKEN_DELAY_MS} ms between tokens, first token after ${FIRST_TOKEN_DELAY_MS} ms)"
MOCK_PORT=$(free_port)
(cd "$WORK" && exec "${base_env[@]}" MOCK_STAMP=true MOCK_TOKEN_DELAY_MS="$TOKEN_DELAY_MS" \
  MOCK_FIRST_TOKEN_DELAY_MS="$FIRST_TOKEN_DELAY_MS" RUST_LOG=warn \
  "$CHATWIRE" mock-upstream --port "$MOCK_PORT") >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_port "$MOCK_PID" "$MOCK_PORT" "the mock upstream" || { cat "$WORK/mock.log" >&2; exit 1; }

SERVER_PID=""
SERVER_PORT=""
start_server() { # name scenario
  local name=$1 scenario=$2 port
  port=$(free_port)
  case "$name" in
    chatwire)
      (cd "$WORK" && exec "${base_env[@]}" PORT="$port" HOST=127.0.0.1 JWT_SECRET="$SECRET" \
        OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT/v1" OPENAI_API_KEY=x \
        DATABASE_URL="sqlite://$WORK/chatwire-$scenario.db?mode=rwc" \
        RATE_LIMIT_PER_MINUTE=0 LOOKUPS_PER_MINUTE=0 MAX_CONCURRENT_STREAMS_PER_USER=100000 SHUTDOWN_GRACE_SECONDS=2 \
        MAX_CONNECTIONS=1000000 MAX_CONNECTIONS_PER_IP=1000000 MAX_CONNECTIONS_PER_USER=1000000 \
        ${CHATWIRE_ENV:-} "$CHATWIRE" serve) >"$WORK/$name-$scenario.log" 2>&1 &
      ;;
    nestjs)
      (cd "$PEER_DIR" && exec "${base_env[@]}" PORT="$port" HOST=127.0.0.1 JWT_SECRET="$SECRET" \
        OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT/v1" OPENAI_API_KEY=x \
        DATABASE_PATH="$WORK/nestjs-$scenario.db" \
        node dist/main.js) >"$WORK/$name-$scenario.log" 2>&1 &
      ;;
    ceiling)
      (cd "$WORK" && exec "${base_env[@]}" "$LOADGEN" ceiling --port "$port" \
        --token-delay-ms "$TOKEN_DELAY_MS" --first-token-delay-ms "$FIRST_TOKEN_DELAY_MS") \
        >"$WORK/$name-$scenario.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  SERVER_PORT=$port
  PIDS+=("$SERVER_PID")
  if ! wait_port "$SERVER_PID" "$port" "$name"; then
    tail -n 20 "$WORK/$name-$scenario.log" >&2
    return 1
  fi
  # Listening is not ready: chatwire answers /health once its database is open; the
  # peer logs a line once Nest has finished booting.
  case "$name" in
    chatwire) for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done ;;
    nestjs) for _ in $(seq 1 100); do grep -q listening "$WORK/$name-$scenario.log" && break; sleep 0.1; done ;;
  esac
  sleep 0.5 # let start-up allocations settle before the baseline RSS
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

run_one() { # scenario server
  local scenario=$1 name=$2 args=()
  say "$scenario: $name"
  if ! start_server "$name" "$scenario"; then
    echo "NOTE: $name did not start; no $scenario result for it" >&2
    return 0
  fi
  case "$scenario" in
    idle) args=(idle --connections "$IDLE_N" --settle-ms "$SETTLE_MS" --hold-ms "$HOLD_MS") ;;
    storm) args=(idle --storm --connections "$STORM_N" --storm-streams "$STORM_STREAMS" --storm-window "$STORM_S"
                 --tokens "$TOKENS" --rate "$RATE") ;;
    stream) args=(stream --clients "$STREAM_CLIENTS" --tokens "$TOKENS" --rate "$RATE" --duration "$STREAM_S"
                  --upstream-pid "$MOCK_PID") ;;
    saturate) args=(stream --saturate --clients "$SAT_START" --factor "$SAT_FACTOR" --max-clients "$SAT_MAX"
                    --threshold-ms "$THRESHOLD_MS" --min-delivery "$MIN_DELIVERY" --pause-ms "$PAUSE_MS" --tokens "$TOKENS" --rate "$RATE" --duration "$SAT_S") ;;
    overload) # twice this run's saturation point of the same server
      local sat
      sat=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["saturation"]["clients"])' \
        "$RESULTS/saturate-$name.json" 2>/dev/null) || sat=""
      if [ -z "$sat" ]; then echo "NOTE: no saturation result for $name; no overload run" >&2; stop_server; return 0; fi
      args=(stream --scenario overload --clients $((2 * sat)) --tokens "$TOKENS" --rate "$RATE" --duration "$STREAM_S"
            --upstream-pid "$MOCK_PID") ;;
    ttft) args=(ttft --rate "$TTFT_RATE" --duration "$TTFT_S" --first-token-delay-ms "$FIRST_TOKEN_DELAY_MS") ;;
    cpu) args=(cpu --clients "$CPU_CLIENTS" --tokens "$CPU_TOKENS" --rate "$RATE" --duration "$CPU_S"
               --threshold-ms "$THRESHOLD_MS" --min-delivery "$MIN_DELIVERY" --upstream-pid "$MOCK_PID") ;;
    *) echo "unknown scenario $scenario" >&2; stop_server; return 0 ;;
  esac
  local out=$WORK/$scenario-$name.out
  if "$LOADGEN" "${args[@]}" --url "http://127.0.0.1:$SERVER_PORT" --pid "$SERVER_PID" --label "$name" \
      --secret "$SECRET" >"$out"; then
    sed '$d' "$out" >&2
    tail -n 1 "$out" >"$RESULTS/$scenario-$name.json"
  else
    echo "NOTE: the load generator failed on $scenario/$name" >&2
    cat "$out" >&2
  fi
  stop_server
}

START=$(date +%s)
i=0
for scenario in "${SCENARIO_LIST[@]}"; do
  n=${#SERVER_LIST[@]}
  for ((k = 0; k < n; k++)); do
    run_one "$scenario" "${SERVER_LIST[$(((i + k) % n))]}"
  done
  i=$((i + 1))
done

json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr -d '\n')"; }
cat >"$RESULTS/meta.json" <<EOF
{
  "mode": $(json_str "$MODE"),
  "elapsed_s": $(($(date +%s) - START)),
  "commit": $(json_str "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"),
  "machine": {
    "nproc": $(nproc),
    "cpu": $(json_str "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"),
    "memory": $(json_str "$(free -h | awk '/^Mem:/ {print $2}')"),
    "kernel": $(json_str "$(uname -r)"),
    "node": $(json_str "$(node --version 2>/dev/null || echo none)")
  },
  "settings": {
    "idle_connections": $IDLE_N, "storm_connections": $STORM_N, "storm_streams": $STORM_STREAMS, "storm_seconds": $STORM_S, "stream_clients": $STREAM_CLIENTS, "tokens_per_answer": $TOKENS,
    "rate_per_stream": $RATE, "token_delay_ms": $TOKEN_DELAY_MS, "stream_seconds": $STREAM_S,
    "saturate_start": $SAT_START, "saturate_factor": $SAT_FACTOR, "saturate_max": $SAT_MAX,
    "saturate_step_seconds": $SAT_S, "threshold_ms": $THRESHOLD_MS, "min_delivery": $MIN_DELIVERY, "ttft_rate": $TTFT_RATE,
    "ttft_seconds": $TTFT_S, "first_token_delay_ms": $FIRST_TOKEN_DELAY_MS,
    "cpu_clients": $CPU_CLIENTS, "cpu_tokens_per_answer": $CPU_TOKENS, "cpu_seconds": $CPU_S,
    "cpu_offered_tokens_per_s": $((CPU_CLIENTS * RATE))
  },
  "servers": $(json_str "$SERVERS"),
  "peer_note": $(json_str "${PEER_NOTE:-}")
}
EOF

say "results ($MODE run, $(($(date +%s) - START)) s)"
[ -n "$PEER_NOTE" ] && echo "NOTE: no NestJS peer in this run ($PEER_NOTE): its columns and the ratios are missing."
"$LOADGEN" report --dir "$RESULTS" --out "$ROOT/bench/results/latest.json" >"$WORK/report.txt"
cp "$ROOT/bench/results/latest.json" "$ROOT/bench/results/$MODE-$(date +%Y%m%d-%H%M%S).json"
sed '$d' "$WORK/report.txt"
echo "(written to bench/results/latest.json)"
tail -n 1 "$WORK/report.txt"
