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
source benches/common/serve.sh
bench_serve rooms_load
"$LOAD" http "$BASE" "$PID"
"$LOAD" storage "$MEMBERS"
