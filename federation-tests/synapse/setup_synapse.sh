#!/usr/bin/env bash
# Makes a Python virtual environment with Synapse (pinned) for the interop tests in
# federation-tests/tests/synapse_interop.rs. Usage: setup_synapse.sh VENV_DIR
# The venv is built beside its final place and moved there when complete, so a run that
# is interrupted never leaves a half-installed venv behind.
set -euo pipefail
venv="${1:?usage: setup_synapse.sh VENV_DIR}"
version="1.163.2"
if [ -x "$venv/bin/python" ] && [ "$("$venv/bin/python" -c 'import synapse; print(synapse.__version__)' 2>/dev/null)" = "$version" ]; then
  exit 0
fi
mkdir -p "$(dirname "$venv")"
rm -rf "$venv.tmp"
python3 -m venv "$venv.tmp"
"$venv.tmp/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse==$version"
"$venv.tmp/bin/python" -c "import synapse; assert synapse.__version__ == '$version'"
rm -rf "$venv"
mv "$venv.tmp" "$venv"
