#!/usr/bin/env bash
# Set up (first run only) and launch the app on http://127.0.0.1:7860 with the bundled offline models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python app.py "$@"
