#!/usr/bin/env bash
# Idempotent set-up of .venv with what the app needs (`install.sh test` adds the test tools).
# A stamp of the requirement files makes a second run take well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-}
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
stamp=".venv/.installed-$(cat requirements*.txt scripts/install.sh | sha256sum | cut -c1-16)-${extra:-app}"
if [ ! -f "$stamp" ]; then
  echo "Installing dependencies into .venv (first run only)..." >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned, so nothing later pulls a different build. PyPI's Linux build of this
  # version includes CUDA, so a machine with an NVIDIA GPU gets GPU support from the same line.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -r requirements-bundled.txt
  if [ "$extra" = test ]; then
    .venv/bin/python -m pip install -q -r requirements-test.txt
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
  # A test install also satisfies the app.
  [ "$extra" = test ] && touch "${stamp%-test}-app"
fi
# Scanned pages and images are read by Tesseract, a system program: Debian's package where we can install it.
if ! command -v tesseract >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Debian's tesseract-ocr (OCR of scanned pages)..." >&2
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr >/dev/null; } ||
      echo "Could not install tesseract-ocr: scanned pages and images will not be read." >&2
  else
    echo "Note: scanned pages and images need Tesseract (apt install tesseract-ocr / brew install tesseract)." >&2
  fi
fi
exit 0
