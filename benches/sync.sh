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
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ourwhats/target}"
ulimit -n 8192 2>/dev/null || true

cargo build --release --quiet
cargo bench --quiet --bench sync_load --no-run
LOAD=$(ls -t "$CARGO_TARGET_DIR"/release/deps/sync_load-* | grep -v '\.d$' | head -1)
BIN="$CARGO_TARGET_DIR/release/ourwhats"
DATA="$(mktemp -d)"
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DATA"' EXIT

OURWHATS_DATA_DIR="$DATA" OURWHATS_CLIENT__LISTEN="127.0.0.1:$PORT" \
OURWHATS_FEDERATION__ENABLED=false OURWHATS_RATE_LIMITS__ENABLED=false \
OURWHATS_LOGGING__LEVEL=warn "$BIN" serve &
PID=$!
BASE="http://127.0.0.1:$PORT"
for _ in $(seq 100); do curl -sf "$BASE/_matrix/client/versions" >/dev/null && break; sleep 0.1; done

echo "machine: $(nproc) cores, $(uname -m), $(date -u +%Y-%m-%d)"
"$LOAD" "$BASE" "$PID"
