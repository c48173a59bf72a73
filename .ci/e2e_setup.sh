#!/usr/bin/env bash
# Front end + browser for the widget tests; idempotent, safe to run before every pytest.
#   - Debian's chromium (Playwright's own browser download does not work offline here)
#   - js/: npm ci, esbuild bundle into mllm_lens/static/widget.js, vitest unit tests
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi

cd js
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run build
npm test
