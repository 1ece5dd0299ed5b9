#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite. pytest exits non-zero when it collects no test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two workers, one thread each (the suite is mostly stage processes and DVC); the Ray tests share one worker.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -q -n "${WSSS_TEST_WORKERS:-2}" --dist loadgroup "$@"
