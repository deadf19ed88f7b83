#!/usr/bin/env bash
# Makes a Python virtual environment with matrix-nio and its end-to-end encryption extra
# (vodozemac), for tests/e2ee_interop.rs. Usage: setup_nio.sh VENV_DIR
set -euo pipefail
venv="${1:?usage: setup_nio.sh VENV_DIR}"
python3 -m venv "$venv.tmp"
"$venv.tmp/bin/pip" install --quiet --disable-pip-version-check "matrix-nio[e2e]==0.26.0"
"$venv.tmp/bin/python" -c "from nio.crypto import ENCRYPTION_ENABLED; assert ENCRYPTION_ENABLED"
rm -rf "$venv"
mv "$venv.tmp" "$venv"
