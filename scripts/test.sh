#!/usr/bin/env bash
# Runs every test: the Rust suite on SQLite, the same suite on PostgreSQL (when
# reachable; required under CI=true), then, against the built binary, the
# socket.io-client suite, the browser tests of the React and Vue examples (Chromium
# is installed with apt-get when missing) and the python-socketio suite.
#
#   scripts/test.sh            everything
#   scripts/test.sh rust       only the Rust suites
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-all}"
PG_URL="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"

step() { printf '\n==> %s\n' "$*"; }

step "cargo build (the binary the client suites run)"
cargo build --locked --bin chatwire

step "Rust tests on SQLite"
env -u DATABASE_URL cargo test --locked --workspace

if command -v pg_isready >/dev/null && pg_isready -q -d "$PG_URL"; then
  # The cluster tests (tests/api/cluster.rs) run in this pass, on the Redis at
  # TEST_REDIS_URL (default 127.0.0.1:6379); one is started here when none answers.
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && command -v redis-server >/dev/null; then
    redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >/dev/null
    for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  step "Rust tests on PostgreSQL ($PG_URL)"
  # Each test makes its own database chatwire_t_*; clear those of earlier runs.
  psql -q -d "$PG_URL" -At -c "SELECT datname FROM pg_database WHERE datname LIKE 'chatwire_t_%'" |
    while read -r db; do psql -q -d "$PG_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"; done
  DATABASE_URL="$PG_URL" cargo test --locked --test api
elif [ "${CI:-}" = "true" ]; then
  echo "PostgreSQL is not reachable at $PG_URL, and CI requires the PostgreSQL run" >&2
  exit 1
else
  echo "(PostgreSQL not reachable at $PG_URL: skipping that run)"
fi

[ "$what" = "rust" ] && exit 0

# The cluster test (tests/js/cluster.test.mjs) runs three nodes behind Debian's nginx.
if ! command -v nginx >/dev/null && [ -x /usr/bin/apt-get ]; then
  step "installing nginx (Debian package)"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends nginx
  # Only the tests start it, on 127.0.0.1:8080, with deploy/nginx/chatwire.conf.
  $sudo service nginx stop >/dev/null 2>&1 || true
fi

step "JavaScript client suite (socket.io-client, node --test)"
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error && npm test)

step "Browser tests (React and Vue apps in Chromium) and the socket.io-client compatibility matrix"
tests/browser/run.sh

step "Python client suite (python-socketio, pytest)"
python3 -m venv target/py-venv
target/py-venv/bin/pip install --quiet --disable-pip-version-check -r tests/py/requirements.txt
target/py-venv/bin/python -m pytest -q -p no:cacheprovider tests/py
