#!/bin/sh
# The fuzz tests in their `full` profile: ten times the CI's examples (about
# 10,000 generated config trees through the loader and the CLI, 5,000 HTTP
# requests against a real daemon). Extra arguments go to pytest, for example
#   scripts/fuzz.sh -k loader
# A failure prints the example and a @reproduce_failure blob to replay it.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export RECONCILER_FUZZ_PROFILE="${RECONCILER_FUZZ_PROFILE:-full}"
exec "$PYTHON" -m pytest tests/fuzz -m fuzz -p no:cacheprovider -q "$@"
