#!/usr/bin/env bash
# Creates .venv in the repository and installs wsss-core with every optional part (Ray too: the tests run its engine).
# torch is installed first and pinned (constraints.txt): on a machine without CUDA this keeps the
# CPU wheel; left unpinned, open_clip_torch's resolution pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ -f .venv/.installed ] && cmp -s .venv/.installed <(cat pyproject.toml constraints.txt); then
  echo "setup: .venv is up to date"
  exit 0
fi
pip_install() {
  # The machine's pip config may list local index folders that do not exist; hide only that noise.
  local log status=0
  log=$(mktemp)
  .venv/bin/pip install --quiet "$@" >"$log" 2>&1 || status=$?
  grep -v "^WARNING: Location" "$log" || true
  rm -f "$log"
  return "$status"
}
pip_install --upgrade pip "setuptools>=77" wheel
pip_install -c constraints.txt torch
pip_install -c constraints.txt -e ".[all,ray,dev]"
cat pyproject.toml constraints.txt > .venv/.installed
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
