#!/usr/bin/env bash
# Measures ourwhats and Synapse side by side with the load generator ourwhats-bench
# (benches/ourwhats-bench), on loopback, on this machine:
#   1. builds ourwhats and ourwhats-bench (release);
#   2. installs Synapse from PyPI into a venv ($SYNAPSE_VENV, pinned $SYNAPSE_VERSION) and
#      writes it a SQLite config (open registration, rate limits off, warnings-only log);
#   3. starts both servers with fresh data folders and reads their idle memory;
#   4. runs every scenario RUNS times against both, alternating which goes first;
#   5. writes the medians, ratios (ours/Synapse) and server CPU per operation into
#      docs/benchmarks.md between the compare.sh markers (benches/compare_table.py).
# Usage: benches/compare.sh [RUNS]        (default 3; about 6 minutes a run on 2 cores)
# SERVERS=ourwhats measures ourwhats alone (no Synapse; the table is printed, not written).
# Scenario sizes can be changed with SEND_SECONDS, REQUEST_SECONDS, DELIVERY_MESSAGES,
# SYNC_ROOMS, ROOMS_COUNT, MEDIA_MIB, BIG_MIB, LONGPOLLS, KEYS_USERS. Raw JSON lines are
# kept in $OUT (default a temp folder).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
SYNAPSE_VERSION="${SYNAPSE_VERSION:-1.163.2}"
SYNAPSE_VENV="${SYNAPSE_VENV:-$HOME/.cache/ourwhats/synapse-venv}"
SERVERS="${SERVERS:-ourwhats synapse}"
SEND_SECONDS="${SEND_SECONDS:-10}"
REQUEST_SECONDS="${REQUEST_SECONDS:-10}"
DELIVERY_MESSAGES="${DELIVERY_MESSAGES:-200}"
SYNC_ROOMS="${SYNC_ROOMS:-200}"
ROOMS_COUNT="${ROOMS_COUNT:-200}"
MEDIA_MIB="${MEDIA_MIB:-10}"
BIG_MIB="${BIG_MIB:-1024}"
LONGPOLLS="${LONGPOLLS:-1000}"
KEYS_USERS="${KEYS_USERS:-1000}"
OURS_PORT="${OURS_PORT:-18030}"
SYNAPSE_PORT="${SYNAPSE_PORT:-18031}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ourwhats/target}"
# 1,000 long-polls hold 1,000 connections in each process.
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)"
measures() { [[ " $SERVERS " == *" $1 "* ]]; }

echo "--- building ourwhats and ourwhats-bench (release)"
cargo build --release --quiet -p ourwhats -p ourwhats-bench
BENCH="$CARGO_TARGET_DIR/release/ourwhats-bench"

if measures synapse && [ "$("$SYNAPSE_VENV/bin/python" -c 'import synapse; print(synapse.__version__)' 2>/dev/null)" != "$SYNAPSE_VERSION" ]; then
  echo "--- installing matrix-synapse==$SYNAPSE_VERSION into $SYNAPSE_VENV"
  python3 -m venv "$SYNAPSE_VENV"
  "$SYNAPSE_VENV/bin/pip" install -q --upgrade pip
  "$SYNAPSE_VENV/bin/pip" install -q "matrix-synapse==$SYNAPSE_VERSION"
fi

WORK="$(mktemp -d)"
OUT="${OUT:-$WORK/results.jsonl}"
OURS_PID=""
SYNAPSE_PID=""
cleanup() {
  for pid in $OURS_PID $SYNAPSE_PID; do kill "$pid" 2>/dev/null || true; done
  for pid in $OURS_PID $SYNAPSE_PID; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK/ours" "$WORK/synapse"
}
trap cleanup EXIT

wait_for() {
  for _ in $(seq 300); do
    curl -sf "$1/_matrix/client/versions" >/dev/null && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
}

if measures ourwhats; then
  echo "--- starting ourwhats on :$OURS_PORT"
  mkdir -p "$WORK/ours"
  OURWHATS_DATA_DIR="$WORK/ours" OURWHATS_CLIENT__LISTEN="127.0.0.1:$OURS_PORT" \
  OURWHATS_FEDERATION__ENABLED=false OURWHATS_RATE_LIMITS__ENABLED=false \
  OURWHATS_MEDIA__MAX_UPLOAD_SIZE=4G OURWHATS_LOGGING__LEVEL=warn \
    "$CARGO_TARGET_DIR/release/ourwhats" serve &
  OURS_PID=$!
  wait_for "http://127.0.0.1:$OURS_PORT"
fi

if measures synapse; then
  echo "--- starting Synapse $SYNAPSE_VERSION on :$SYNAPSE_PORT"
  mkdir -p "$WORK/synapse"
  "$SYNAPSE_VENV/bin/python" benches/synapse_config.py "$WORK/synapse" "$SYNAPSE_PORT"
  (cd "$WORK/synapse" && exec "$SYNAPSE_VENV/bin/python" -m synapse.app.homeserver -c homeserver.yaml) &
  SYNAPSE_PID=$!
  wait_for "http://127.0.0.1:$SYNAPSE_PORT"
fi

# run_scenario LABEL ARGS...: one scenario against one server (if it is measured).
run_scenario() {
  local label="$1" port pid
  shift
  measures "$label" || return 0
  case "$label" in
    ourwhats) port=$OURS_PORT pid=$OURS_PID ;;
    synapse) port=$SYNAPSE_PORT pid=$SYNAPSE_PID ;;
  esac
  "$BENCH" --base "http://127.0.0.1:$port" --server-pid "$pid" --label "$label" "$@" >>"$OUT"
}

# Memory of the servers just started, before any load; then the growth while a large
# file streams in, which only shows on a server whose allocator has not yet grown (after
# the other scenarios, freed memory absorbs it and the growth reads 0).
echo "--- idle, then big-upload --size-mib $BIG_MIB"
run_scenario ourwhats idle --seconds 3
run_scenario synapse idle --seconds 3
run_scenario ourwhats big-upload --size-mib "$BIG_MIB"
run_scenario synapse big-upload --size-mib "$BIG_MIB"

SCENARIOS=(
  "requests --endpoint versions --connections 64 --seconds $REQUEST_SECONDS"
  "requests --endpoint whoami --connections 64 --seconds $REQUEST_SECONDS"
  "send --senders 32 --members 32 --seconds $SEND_SECONDS"
  "messages --messages 1000 --limit 100 --requests 200"
  "delivery --messages $DELIVERY_MESSAGES"
  "sync --rooms $SYNC_ROOMS --initial 10 --incremental 200"
  "longpolls --clients $LONGPOLLS --users 20 --hold-seconds 3"
  "rooms --count $ROOMS_COUNT --concurrency 1"
  "media --size-mib $MEDIA_MIB --count 10"
  "thumbnail --width 4000 --height 3000 --cached 50"
  "keys --devices 100 --users $KEYS_USERS --rounds 20"
)
for run in $(seq "$RUNS"); do
  for scenario in "${SCENARIOS[@]}"; do
    echo "--- run $run/$RUNS: $scenario"
    # shellcheck disable=SC2086
    if [ $((run % 2)) = 1 ]; then
      run_scenario ourwhats $scenario
      run_scenario synapse $scenario
    else
      run_scenario synapse $scenario
      run_scenario ourwhats $scenario
    fi
  done
done

echo "--- results: $OUT"
python3 benches/compare_table.py "$OUT" docs/benchmarks.md \
  --runs "$RUNS" --synapse-version "$SYNAPSE_VERSION" \
  --command "benches/compare.sh $RUNS"
