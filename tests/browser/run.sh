#!/usr/bin/env bash
# The @chatwire/resumable package (installed into a scratch npm project and used
# against the real chatwire binary), browser tests of the React and Vue example apps
# (headless Chromium through playwright-core, against the real chatwire binary; built
# dist/ and the Vite dev server), the admin views (the official @socket.io/admin-ui and
# chatwire's /admin page), then the socket.io-client compatibility matrix (4.8
# and 4.0.0, each transport setting; printed as a table).
#
#   tests/browser/run.sh                      everything
#   tests/browser/run.sh compat.test.mjs      only some test files
#
# Needs: the chatwire binary (cargo build; CHATWIRE_BIN to use another), Node.js
# >= 20.19 with npm, and Chromium at /usr/bin/chromium (installed with apt-get when
# missing; CHROMIUM_PATH to use another). UPDATE_SCREENSHOTS=1 rewrites
# docs/screenshots/{react,vue,admin-ui,admin-page,realtime}.png.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

step() { printf '\n==> %s\n' "$*"; }

chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  step "installing Chromium (Debian package)"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends chromium
  chromium=/usr/bin/chromium
fi
export CHROMIUM_PATH="$chromium"

bin="${CHATWIRE_BIN:-$repo/target/debug/chatwire}"
if [ ! -x "$bin" ]; then
  echo "chatwire binary not found at $bin: run 'cargo build' first (or set CHATWIRE_BIN)" >&2
  exit 1
fi
export CHATWIRE_BIN="$bin"

npm_ci() { (cd "$1" && npm ci --no-audit --no-fund --loglevel=error); }

for app in react vue; do
  step "client-examples/$app: npm ci && npm run build"
  npm_ci "$repo/client-examples/$app"
  (cd "$repo/client-examples/$app" && npm run build --silent)
done

step "tests/browser: npm ci"
npm_ci "$here"

step "browser tests and compatibility matrix (node --test)"
cd "$here"
if [ "$#" -gt 0 ]; then files=("$@"); else files=(package.test.mjs react.test.mjs vue.test.mjs admin.test.mjs realtime.test.mjs compat.test.mjs); fi
node --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
