#!/usr/bin/env bash
# The cluster benchmark (`bench/run.sh --cluster`): the `stream` scenario against
#   single  one node, PostgreSQL, no Redis (the baseline),
#   one     one node in cluster mode (PostgreSQL + Redis),
#   three   three nodes in cluster mode behind nginx (deploy/nginx/chatwire.conf),
# with the same total load. In `three`, one load generator per node goes through nginx
# with the node's pin cookie (`chatwire_node=nodeK`), so every figure is per node:
# tokens/s, delivery lag p50/p99, CPU per token (the node's own process), and Redis
# round trips per token (the node's `chatwire_redis_commands_total`: commands, pipelines
# and scripts, over its `chatwire_tokens_streamed_total`), then redis-server's own count
# of commands processed (a script's inner commands included) and its CPU, per token.
#
#   bench/run.sh --cluster            STREAM_CLIENTS=300 (100 per node: 15,000 tokens/s in all,
#                                     below one node's saturation on 2 cores), 20 s
#   bench/run.sh --cluster --quick    STREAM_CLIENTS=150, 6 s
#
# Needs PostgreSQL (BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test;
# each configuration gets a fresh schema, dropped at the end), redis-server and nginx on
# PATH. Everything listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=${MODE:-full}
if [ "$MODE" = quick ]; then
  : "${STREAM_CLIENTS:=150}" "${STREAM_S:=6}"
else
  : "${STREAM_CLIENTS:=300}" "${STREAM_S:=20}"
fi
: "${TOKENS:=200}" "${RATE:=50}" "${CONFIGS:=single,one,three}"
PG=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
TOKEN_DELAY_MS=$((1000 / RATE))
SECRET="bench-$(date +%s)-$RANDOM"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

for tool in redis-server redis-cli nginx psql curl; do
  command -v "$tool" >/dev/null || { echo "bench/cluster.sh needs $tool on PATH" >&2; exit 1; }
done
pg_isready -q -d "$PG" || { echo "PostgreSQL is not reachable at $PG" >&2; exit 1; }

T0=$(date +%s)
say() { printf '\n==> [%ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/chatwire-cluster-bench.XXXXXX")
PIDS=()
SCHEMAS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for s in "${SCHEMAS[@]}"; do psql -q -d "$PG" -c "DROP SCHEMA IF EXISTS $s CASCADE" >/dev/null 2>&1 || true; done
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
free_port() { "$LOADGEN" free-port; }
base_env=(env -i "PATH=$PATH" "HOME=${HOME:-/root}" "LANG=C.UTF-8")

wait_http() { # url pid what
  for _ in $(seq 1 300); do
    kill -0 "$2" 2>/dev/null || { echo "$3 exited during start-up" >&2; return 1; }
    curl -sf "$1" >/dev/null && return 0
    sleep 0.1
  done
  echo "$3 did not answer $1 within 30 s" >&2
  return 1
}

say "mock upstream (stamp mode, ${TOKEN_DELAY_MS} ms between tokens)"
MOCK_PORT=$(free_port)
(cd "$WORK" && exec "${base_env[@]}" MOCK_STAMP=true MOCK_TOKEN_DELAY_MS="$TOKEN_DELAY_MS" RUST_LOG=warn \
  "$CHATWIRE" mock-upstream --port "$MOCK_PORT") >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MOCK_PORT") 2>/dev/null && break; sleep 0.1; done

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

NODE_PIDS=()
NODE_PORTS=()
start_nodes() { # config count redis?
  local config=$1 count=$2 redis=$3 schema i port
  schema="cw_bench_${config}_$RANDOM"
  SCHEMAS+=("$schema")
  NODE_PIDS=()
  NODE_PORTS=()
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  for ((i = 1; i <= count; i++)); do
    port=$(free_port)
    local extra=()
    [ "$redis" = yes ] && extra=(REDIS_URL="redis://127.0.0.1:$REDIS_PORT" NODE_ID="node$i")
    (cd "$WORK" && exec "${base_env[@]}" PORT="$port" HOST=127.0.0.1 JWT_SECRET="$SECRET" \
      OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT/v1" OPENAI_API_KEY=x \
      DATABASE_URL="$PG" DATABASE_SCHEMA="$schema" "${extra[@]}" RUST_LOG=warn \
      RATE_LIMIT_PER_MINUTE=0 LOOKUPS_PER_MINUTE=0 MAX_CONCURRENT_STREAMS_PER_USER=100000 SHUTDOWN_GRACE_SECONDS=2 \
      MAX_CONNECTIONS=1000000 MAX_CONNECTIONS_PER_IP=1000000 MAX_CONNECTIONS_PER_USER=1000000 \
      "$CHATWIRE" serve) >"$WORK/$config-node$i.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_http "http://127.0.0.1:$port/health" "$pid" "$config node $i" || { tail -n 20 "$WORK/$config-node$i.log" >&2; exit 1; }
    NODE_PIDS+=("$pid")
    NODE_PORTS+=("$port")
  done
  sleep 0.5
}

stop_nodes() {
  for pid in "${NODE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${NODE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

metric() { # port name: the counter's value now
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { v = $2 } END { print (v == "" ? 0 : v) }'
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
redis_stat() { redis-cli -p "$REDIS_PORT" info "$1" | tr -d '\r' | awk -F: -v k="$2" '$1 == k { print $2 }'; }
redis_cpu() { echo "$(redis_stat cpu used_cpu_user) $(redis_stat cpu used_cpu_sys)" | awk '{ printf "%.6f", $1 + $2 }'; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a - b }'; }

NGINX_PORT=""
start_nginx() {
  NGINX_PORT=$(free_port)
  local conf=$WORK/nginx.conf
  sed -e "s/127.0.0.1:8001/127.0.0.1:${NODE_PORTS[0]}/g" -e "s/127.0.0.1:8002/127.0.0.1:${NODE_PORTS[1]}/g" \
      -e "s/127.0.0.1:8003/127.0.0.1:${NODE_PORTS[2]}/g" -e "s/127.0.0.1:8080/127.0.0.1:$NGINX_PORT/g" \
      "$ROOT/deploy/nginx/chatwire.conf" >"$conf"
  mkdir -p "$WORK/nginx"
  nginx -p "$WORK/nginx" -c "$conf" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$NGINX_PORT") 2>/dev/null && break; sleep 0.1; done
}

ROWS=$WORK/rows.tsv
: >"$ROWS"
run_config() { # config
  local config=$1 count=1 redis=yes
  case "$config" in
    single) redis=no ;;
    one) ;;
    three) count=3 ;;
    *) echo "unknown configuration $config" >&2; return 0 ;;
  esac
  say "$config: $count node(s), redis=$redis, $STREAM_CLIENTS clients in all"
  start_nodes "$config" "$count" "$redis"
  local url per i
  per=$((STREAM_CLIENTS / count))
  [ "$count" = 3 ] && start_nginx
  local before_cmds=() before_tokens=() before_cpu=() lg=()
  local redis_cmds0 redis_cpu0
  redis_cmds0=$(redis_stat stats total_commands_processed)
  redis_cpu0=$(redis_cpu)
  for ((i = 0; i < count; i++)); do
    before_cmds+=("$(metric "${NODE_PORTS[$i]}" chatwire_redis_commands_total)")
    before_tokens+=("$(metric "${NODE_PORTS[$i]}" chatwire_tokens_streamed_total)")
  done
  for ((i = 0; i < count; i++)); do
    local args=(stream --clients "$per" --tokens "$TOKENS" --rate "$RATE" --duration "$STREAM_S"
                --pid "${NODE_PIDS[$i]}" --label "$config-node$((i + 1))" --secret "$SECRET")
    if [ "$count" = 3 ]; then
      args+=(--url "http://127.0.0.1:$NGINX_PORT" --cookie "chatwire_node=node$((i + 1))")
    else
      args+=(--url "http://127.0.0.1:${NODE_PORTS[$i]}")
    fi
    "$LOADGEN" "${args[@]}" >"$WORK/$config-$i.out" 2>"$WORK/$config-$i.err" &
    lg+=($!)
  done
  for pid in "${lg[@]}"; do wait "$pid" || echo "NOTE: a load generator failed in $config" >&2; done
  local redis_cmds1 redis_cpu1 tokens_all=0
  redis_cmds1=$(redis_stat stats total_commands_processed)
  redis_cpu1=$(redis_cpu)
  for ((i = 0; i < count; i++)); do
    local cmds tokens result
    cmds=$(sub "$(metric "${NODE_PORTS[$i]}" chatwire_redis_commands_total)" "${before_cmds[$i]}")
    tokens=$(sub "$(metric "${NODE_PORTS[$i]}" chatwire_tokens_streamed_total)" "${before_tokens[$i]}")
    tokens_all=$(sub "$tokens_all" "-$tokens")
    result=$(tail -n 1 "$WORK/$config-$i.out")
    sed '$d' "$WORK/$config-$i.out" >&2
    printf '%s\t%s\t%s\t%s\t%s\n' "$config" "node$((i + 1))" "$cmds" "$tokens" "$result" >>"$ROWS"
  done
  printf '%s\tredis\t%s\t%s\t%s\n' "$config" "$(sub "$redis_cmds1" "$redis_cmds0")" "$tokens_all" \
    "{\"redis_cpu_s\": $(sub "$redis_cpu1" "$redis_cpu0")}" >>"$ROWS"
  [ "$count" = 3 ] && { kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; }
  stop_nodes
}

IFS=, read -r -a CONFIG_LIST <<<"$CONFIGS"
for config in "${CONFIG_LIST[@]}"; do run_config "$config"; done

say "results ($MODE, $STREAM_CLIENTS clients in all, $RATE tokens/s per stream, ${STREAM_S} s windows)"
mkdir -p bench/results
python3 - "$ROWS" "$ROOT/bench/results/cluster-latest.json" <<'PY'
import json, sys
rows, out = sys.argv[1], sys.argv[2]
nodes, redis = [], {}
for line in open(rows):
    config, node, cmds, tokens, result = line.rstrip("\n").split("\t", 4)
    cmds, tokens = float(cmds), float(tokens)
    r = json.loads(result) if result.startswith("{") else {}
    if node == "redis":
        redis[config] = {"commands": cmds, "tokens": tokens, "cpu_s": r.get("redis_cpu_s", 0.0)}
        continue
    nodes.append({
        "config": config, "node": node, "clients": r.get("clients"),
        "tokens_per_s": r.get("tokens_per_s"), "lag_p50_ms": r.get("lag", {}).get("p50_ms"),
        "lag_p99_ms": r.get("lag", {}).get("p99_ms"), "cpu_us_per_token": r.get("server_cpu_us_per_token"),
        "redis_commands_per_token": cmds / tokens if tokens else None, "lost_tokens": r.get("lost_tokens"),
        "errors": r.get("error_count"), "node_tokens": tokens, "client_tokens": r.get("tokens_received"),
    })
    # Every token a node streamed went to its own load generator's clients: the pin held.
    got = r.get("tokens_received") or 0
    if tokens and abs(got - tokens) > 0.02 * tokens:
        print(f"WARNING: {config}/{node} streamed {tokens:.0f} tokens, its clients got {got}: the clients were not all on it")
f = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"
print("| config | node | clients | tokens/s | lag p50 ms | lag p99 ms | CPU µs/token | Redis round trips/token | lost | errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
for n in nodes:
    print(f"| {n['config']} | {n['node']} | {n['clients']} | {f(n['tokens_per_s'], 0)} | {f(n['lag_p50_ms'])} | {f(n['lag_p99_ms'])} "
          f"| {f(n['cpu_us_per_token'])} | {f(n['redis_commands_per_token'], 3)} | {n['lost_tokens']} | {n['errors']} |")
print()
for config, r in redis.items():
    if r["commands"] and r["tokens"]:
        print(f"redis-server in {config}: {r['commands']:.0f} commands processed (a script's inner commands count) for {r['tokens']:.0f} tokens = {r['commands'] / r['tokens']:.3f} per token, "
              f"{r['cpu_s'] * 1e6 / r['tokens']:.2f} µs of Redis CPU per token")
def mean_cpu(config):
    v = [n["cpu_us_per_token"] for n in nodes if n["config"] == config and n["cpu_us_per_token"]]
    return sum(v) / len(v) if v else None
base = mean_cpu("single")
summary = {}
for config in ("one", "three"):
    c = mean_cpu(config)
    if base and c:
        summary[config] = c / base
if summary:
    print("cpu per token vs single: " + " ".join(f"{k}={v:.2f}x" for k, v in summary.items()))
json.dump({"nodes": nodes, "redis": redis, "cpu_vs_single": summary}, open(out, "w"), indent=2)
print(f"(written to {out})")
PY
