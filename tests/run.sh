#!/usr/bin/env bash
# The one command that installs and runs the whole test suite on a fresh Debian machine (and in CI, via .ci/run).
#
# 1. system packages the tests need, installed explicitly and idempotently (tests/setup/debian-packages.txt);
# 2. a virtualenv in .venv with the project and its `test` extra;
# 3. static checks: ruff, mypy --strict, the import-direction contracts;
# 4. the real Kubernetes control plane built from its Go modules (cached per machine, tests/cluster/build.py);
# 5. pytest (extra arguments are passed through, e.g. `tests/run.sh -k binder`).
set -euo pipefail
cd "$(dirname "$0")/.."
# The machine's Go (1.26+) before any older one a Debian package may put on PATH.
export PATH="/usr/local/go/bin:$PATH"

tests/setup/install-system-packages.sh

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy
echo "== import contracts"; .venv/bin/lint-imports
echo "== real control plane (Kubernetes from its Go modules)"; .venv/bin/python -m tests.cluster.build
echo "== pytest"; .venv/bin/python -m pytest "$@"
