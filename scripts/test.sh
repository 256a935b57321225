#!/usr/bin/env bash
# Sets this machine up (idempotent), then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache  # the layers of README "Layout" import one way (pyproject.toml)
exec .venv/bin/python -m pytest "$@"
