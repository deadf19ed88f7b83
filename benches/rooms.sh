#!/usr/bin/env bash
# Benchmark for the rooms issue's targets, on release builds (see benches/rooms_load.rs):
#   - PUT /send into a room of 32 members from 32 connections: events/s and server CPU per
#     event (median of RUNS runs of SEND_SECS seconds);
#   - GET /messages of 100 events and POST /createRoom: median latency;
#   - state bytes stored per message and per membership change in a room of MEMBERS members.
# Usage: benches/rooms.sh [RUNS] [SEND_SECS] [MEMBERS]
# The load generator shares the 2 cores with the server.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUNS="${1:-5}"
export SEND_SECS="${2:-10}"
MEMBERS="${3:-10000}"
PORT="${PORT:-18009}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ourwhats/target}"

cargo build --release --quiet
cargo bench --quiet --bench rooms_load --no-run
LOAD=$(ls -t "$CARGO_TARGET_DIR"/release/deps/rooms_load-* | grep -v '\.d$' | head -1)
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
"$LOAD" http "$BASE" "$PID"
"$LOAD" storage "$MEMBERS"
