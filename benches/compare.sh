#!/usr/bin/env bash
# Measures ourwhats and Synapse side by side with the load generator ourwhats-bench
# (benches/ourwhats-bench), on loopback, on this machine:
#   1. builds ourwhats and ourwhats-bench (release);
#   2. installs Synapse from PyPI into a venv ($SYNAPSE_VENV, pinned $SYNAPSE_VERSION) and
#      writes it a SQLite config (open registration, rate limits off, warnings-only log);
#   3. starts both servers with fresh data folders;
#   4. runs every scenario RUNS times against both, alternating which goes first;
#   5. writes the medians, ratios (ours/Synapse) and server CPU per operation into
#      docs/benchmarks.md between the compare.sh markers (benches/compare_table.py).
# Usage: benches/compare.sh [RUNS]        (default 3; about 3 minutes a run on 2 cores)
# Scenario sizes can be changed with SEND_SECONDS, DELIVERY_MESSAGES, SYNC_ROOMS,
# ROOMS_COUNT, MEDIA_MIB. Raw JSON lines are kept in $OUT (default a temp folder).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
SYNAPSE_VERSION="${SYNAPSE_VERSION:-1.163.2}"
SYNAPSE_VENV="${SYNAPSE_VENV:-$HOME/.cache/ourwhats/synapse-venv}"
SEND_SECONDS="${SEND_SECONDS:-10}"
DELIVERY_MESSAGES="${DELIVERY_MESSAGES:-200}"
SYNC_ROOMS="${SYNC_ROOMS:-200}"
ROOMS_COUNT="${ROOMS_COUNT:-200}"
MEDIA_MIB="${MEDIA_MIB:-10}"
OURS_PORT="${OURS_PORT:-18030}"
SYNAPSE_PORT="${SYNAPSE_PORT:-18031}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ourwhats/target}"

echo "--- building ourwhats and ourwhats-bench (release)"
cargo build --release --quiet -p ourwhats -p ourwhats-bench
BENCH="$CARGO_TARGET_DIR/release/ourwhats-bench"

if [ "$("$SYNAPSE_VENV/bin/python" -c 'import synapse; print(synapse.__version__)' 2>/dev/null)" != "$SYNAPSE_VERSION" ]; then
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

echo "--- starting ourwhats on :$OURS_PORT"
mkdir -p "$WORK/ours"
OURWHATS_DATA_DIR="$WORK/ours" OURWHATS_CLIENT__LISTEN="127.0.0.1:$OURS_PORT" \
OURWHATS_FEDERATION__ENABLED=false OURWHATS_RATE_LIMITS__ENABLED=false \
OURWHATS_MEDIA__MAX_UPLOAD_SIZE=200M OURWHATS_LOGGING__LEVEL=warn \
  "$CARGO_TARGET_DIR/release/ourwhats" serve &
OURS_PID=$!
wait_for "http://127.0.0.1:$OURS_PORT"

echo "--- starting Synapse $SYNAPSE_VERSION on :$SYNAPSE_PORT"
mkdir -p "$WORK/synapse"
"$SYNAPSE_VENV/bin/python" benches/synapse_config.py "$WORK/synapse" "$SYNAPSE_PORT"
(cd "$WORK/synapse" && exec "$SYNAPSE_VENV/bin/python" -m synapse.app.homeserver -c homeserver.yaml) &
SYNAPSE_PID=$!
wait_for "http://127.0.0.1:$SYNAPSE_PORT"

# run_scenario LABEL PORT PID ARGS...
run_scenario() {
  local label="$1" port="$2" pid="$3"
  shift 3
  "$BENCH" --base "http://127.0.0.1:$port" --server-pid "$pid" --label "$label" "$@" >>"$OUT"
}

SCENARIOS=(
  "send --senders 32 --members 32 --seconds $SEND_SECONDS"
  "delivery --messages $DELIVERY_MESSAGES"
  "sync --rooms $SYNC_ROOMS --initial 10 --incremental 200"
  "rooms --count $ROOMS_COUNT --concurrency 1"
  "media --size-mib $MEDIA_MIB --count 10"
)
for run in $(seq "$RUNS"); do
  for scenario in "${SCENARIOS[@]}"; do
    echo "--- run $run/$RUNS: $scenario"
    # shellcheck disable=SC2086
    if [ $((run % 2)) = 1 ]; then
      run_scenario ourwhats "$OURS_PORT" "$OURS_PID" $scenario
      run_scenario synapse "$SYNAPSE_PORT" "$SYNAPSE_PID" $scenario
    else
      run_scenario synapse "$SYNAPSE_PORT" "$SYNAPSE_PID" $scenario
      run_scenario ourwhats "$OURS_PORT" "$OURS_PID" $scenario
    fi
  done
done

echo "--- results: $OUT"
python3 benches/compare_table.py "$OUT" docs/benchmarks.md \
  --runs "$RUNS" --synapse-version "$SYNAPSE_VERSION" \
  --command "benches/compare.sh $RUNS"
