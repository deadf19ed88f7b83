#!/usr/bin/env bash
# Benchmark for the live-chat issue's targets, on a release build (see benches/sync_load.rs):
#   - delivery from PUT /send to a long-polling receiver (p50, p99);
#   - initial /sync of a user in ROOMS rooms, incremental /sync with nothing new;
#   - RSS while POLLERS long-polls are held.
# Usage: benches/sync.sh [ROOMS] [POLLERS] [DELIVERIES]
# The load generator shares the 2 cores with the server.
set -euo pipefail
cd "$(dirname "$0")/.."
export ROOMS="${1:-200}"
export POLLERS="${2:-1000}"
export DELIVERIES="${3:-300}"
PORT="${PORT:-18010}"
ulimit -n 8192 2>/dev/null || true
source benches/common/serve.sh
bench_serve sync_load
"$LOAD" "$BASE" "$PID"
