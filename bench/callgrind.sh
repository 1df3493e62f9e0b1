#!/usr/bin/env bash
# Instructions per delivered token, counted by valgrind's callgrind: exact and the same
# on a busy machine, so two commits compare to the instruction (docs/BENCHMARKS.md,
# "Instructions per token").
#
#   bench/callgrind.sh                 10 clients x 200-token answers at 20 tok/s, 10 s
#   CLIENTS=20 DURATION=20 bench/callgrind.sh
#   TOP=40 bench/callgrind.sh          also print the 40 costliest functions
#   CHATWIRE_BIN=/path/to/chatwire bench/callgrind.sh
#                                      count that binary instead (another commit's release
#                                      build): the mock and the load generator stay this
#                                      commit's, so two commits meet the same load
#
# chatwire runs under callgrind with instrumentation off; a short warm-up run (connects,
# lazy start-up work) is not counted; instrumentation is on only while the measured
# `loadgen stream` runs (its connects, starts, every token, the answers' ends). The
# count is chatwire's alone: the mock upstream and the load generator are other
# processes. OVERLOAD_LAG_MS=0 keeps the scheduling lag (valgrind is ~50x slower) from
# switching on coalescing, so every token is its own frame, as on an idle node.
# Needs valgrind (Debian package; installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${CLIENTS:=10}" "${TOKENS:=200}" "${RATE:=20}" "${DURATION:=10}" "${TOP:=0}"

if ! command -v valgrind >/dev/null; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends valgrind
fi

say() { printf '==> %s\n' "$*" >&2; }
say "building release binaries with line tables (for callgrind_annotate)"
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_PROFILE_RELEASE_STRIP=false \
  cargo build --locked --release -p chatwire -p loadgen >&2
TARGET_DIR=$(realpath "${CARGO_TARGET_DIR:-target}")
MOCK=$TARGET_DIR/release/chatwire
CHATWIRE=$(realpath "${CHATWIRE_BIN:-$MOCK}")
LOADGEN=$TARGET_DIR/release/loadgen

WORK=$(mktemp -d "${TMPDIR:-/tmp}/chatwire-callgrind.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
SECRET="callgrind-$RANDOM-$RANDOM"
base_env=(env -i "PATH=$PATH" "HOME=${HOME:-/root}" "LANG=C.UTF-8")

MOCK_PORT=$("$LOADGEN" free-port)
(cd "$WORK" && exec "${base_env[@]}" MOCK_STAMP=true MOCK_TOKEN_DELAY_MS=$((1000 / RATE)) RUST_LOG=warn \
  "$MOCK" mock-upstream --port "$MOCK_PORT") >"$WORK/mock.log" 2>&1 &
PIDS+=($!)

PORT=$("$LOADGEN" free-port)
(cd "$WORK" && exec "${base_env[@]}" PORT="$PORT" HOST=127.0.0.1 JWT_SECRET="$SECRET" \
  OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT/v1" OPENAI_API_KEY=x \
  DATABASE_URL="sqlite://$WORK/chatwire.db?mode=rwc" RATE_LIMIT_PER_MINUTE=0 \
  MAX_CONCURRENT_STREAMS_PER_USER=1000 OVERLOAD_LAG_MS=0 RUST_LOG=warn \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" \
  "$CHATWIRE" serve) >"$WORK/chatwire.log" 2>&1 &
VG_PID=$! # every exec keeps the process id: this is valgrind running chatwire
PIDS+=("$VG_PID")
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { cat "$WORK/chatwire.log" >&2; exit 1; }

run_stream() { # seconds
  "$LOADGEN" stream --url "http://127.0.0.1:$PORT" --secret "$SECRET" --clients "$CLIENTS" \
    --tokens "$TOKENS" --rate "$RATE" --duration "$1" --recv-timeout 120 --label chatwire
}
# valgrind names its control pipe after the HOST variable (chatwire's listen address
# here), so callgrind_control must run with the same one to find it.
control() { HOST=127.0.0.1 callgrind_control "$@" "$VG_PID" >/dev/null; }
say "warm-up (not counted)"
run_stream 2 >/dev/null
say "measuring: $CLIENTS clients x $TOKENS-token answers at $RATE tok/s for $DURATION s"
control -i on
run_stream "$DURATION" >"$WORK/stream.out"
control -i off
kill -TERM "$VG_PID"
for _ in $(seq 1 300); do kill -0 "$VG_PID" 2>/dev/null || break; sleep 0.2; done

result=$(tail -n 1 "$WORK/stream.out")
tokens=$(printf '%s' "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_received"])')
answers=$(printf '%s' "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["answers"])')
lost=$(printf '%s' "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["lost_tokens"])')
# Every dump's "totals:" line (one file, or one per dump) summed: instructions (Ir).
ir=$(cat "$WORK"/cg.out* | awk '/^totals:/ {s += $2} END {print s + 0}')
[ "$ir" -gt 0 ] || { echo "callgrind counted nothing (was collection switched on?)" >&2; exit 1; }
[ "$tokens" -gt 0 ] || { echo "no tokens delivered" >&2; cat "$WORK/stream.out" >&2; exit 1; }
printf 'callgrind: %s instructions for %s tokens in %s answers (lost %s): %s instructions per token\n' \
  "$ir" "$tokens" "$answers" "$lost" "$((ir / tokens))"
if [ "$TOP" -gt 0 ]; then
  callgrind_annotate --inclusive=no "$WORK"/cg.out* 2>/dev/null | sed -n "1,$((TOP + 25))p"
fi
