#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
# The browser tests drive Debian's Chromium (never a browser download); install it when we can.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's chromium for the browser tests..." >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# Converted model checkpoints are kept between runs, outside any test's data folder.
export LAB_MODEL_CACHE="${LAB_MODEL_CACHE:-$PWD/.cache/models}"
exec .venv/bin/python -m pytest "$@"
