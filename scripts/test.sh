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

step "JavaScript client suite (socket.io-client, node --test)"
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error && npm test)

step "Browser tests (React and Vue apps in Chromium) and the socket.io-client compatibility matrix"
tests/browser/run.sh

step "Python client suite (python-socketio, pytest)"
python3 -m venv target/py-venv
target/py-venv/bin/pip install --quiet --disable-pip-version-check -r tests/py/requirements.txt
target/py-venv/bin/python -m pytest -q -p no:cacheprovider tests/py
