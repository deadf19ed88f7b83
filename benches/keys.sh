#!/usr/bin/env bash
# Benchmark for the end-to-end encryption issue's targets, on a release build (see
# benches/keys_load.rs): /keys/claim of CLAIM_DEVICES devices in one request, /keys/query
# of QUERY_USERS users. Usage: benches/keys.sh [CLAIM_DEVICES] [QUERY_USERS]
# The load generator shares the 2 cores with the server.
set -euo pipefail
cd "$(dirname "$0")/.."
export CLAIM_DEVICES="${1:-100}"
export QUERY_USERS="${2:-1000}"
PORT="${PORT:-18020}"
source benches/common/serve.sh
bench_serve keys_load
"$LOAD" "$BASE" "$PID"
