#!/usr/bin/env bash
# What attack-shaped traffic costs chatwire's memory, with its default limits on:
# the release binary under `loadgen flood`, printing the server's RSS before, at its
# peak during, and after each flood (docs/BENCHMARKS.md, "Memory under attack").
#
#   bench/flood.sh        lookups: 2 sockets x 60,000 chat:join; attachments: 40 sockets x 10 MiB
#
# Sizes: LOOKUP_SOCKETS, LOOKUPS, ATTACH_SOCKETS, ATTACH_MIB. Binaries come from
# $CARGO_TARGET_DIR (default target/)/release, built here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LOOKUP_SOCKETS:=2}" "${LOOKUPS:=60000}" "${ATTACH_SOCKETS:=40}" "${ATTACH_MIB:=10}"
BIN=${CARGO_TARGET_DIR:-target}/release
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
if [ ! -x "$BIN/chatwire" ] || [ ! -x "$BIN/loadgen" ]; then
  cargo build --release --locked -p chatwire -p loadgen >&2
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/chatwire-flood.XXXXXX")
SECRET="flood-$RANDOM-$RANDOM"
PORT=$("$BIN/loadgen" free-port)
(cd "$WORK" && exec env -i PATH="$PATH" PORT="$PORT" HOST=127.0.0.1 JWT_SECRET="$SECRET" UPSTREAM=mock \
  DATABASE_URL="sqlite://$WORK/flood.db?mode=rwc" RUST_LOG=warn "$BIN/chatwire" serve) >"$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
run() { JWT_SECRET="$SECRET" "$BIN/loadgen" flood --url "http://127.0.0.1:$PORT" --pid "$SERVER" --label chatwire "$@" | head -n 2; }
run --kind lookups --sockets "$LOOKUP_SOCKETS" --events "$LOOKUPS"
run --kind attachments --sockets "$ATTACH_SOCKETS" --events "$ATTACH_MIB"
echo "server log lines: $(wc -l <"$WORK/server.log")"
