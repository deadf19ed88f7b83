#!/usr/bin/env bash
# Benchmark for the foundation issue's targets, on a release build:
#   - GET /_matrix/client/versions and authenticated GET /account/whoami, requests/s under
#     wrk on loopback (median of RUNS runs of DURATION each);
#   - the server's idle RSS after start-up, and its RSS after the load.
# Usage: benches/foundation.sh [RUNS] [DURATION]      (needs wrk: apt-get install wrk)
# The load generator shares the machine with the server: on 2 cores, wrk gets one thread.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-5}"
DURATION="${2:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
PORT="${PORT:-18008}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ourwhats/target}"

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
cargo build --release --quiet
BIN="$CARGO_TARGET_DIR/release/ourwhats"
DATA="$(mktemp -d)"
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DATA"' EXIT

OURWHATS_DATA_DIR="$DATA" OURWHATS_CLIENT__LISTEN="127.0.0.1:$PORT" \
OURWHATS_FEDERATION__ENABLED=false OURWHATS_RATE_LIMITS__ENABLED=false \
OURWHATS_LOGGING__LEVEL=warn "$BIN" serve &
PID=$!
BASE="http://127.0.0.1:$PORT"
for _ in $(seq 100); do curl -sf "$BASE/_matrix/client/versions" >/dev/null && break; sleep 0.1; done
sleep 2
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
IDLE_RSS=$(rss_kib)

SESSION=$(curl -s -XPOST "$BASE/_matrix/client/v3/register" -d '{"username":"bench","password":"bench-pw"}' \
  | sed -E 's/.*"session":"([^"]+)".*/\1/')
TOKEN=$(curl -s -XPOST "$BASE/_matrix/client/v3/register" \
  -d "{\"username\":\"bench\",\"password\":\"bench-pw\",\"auth\":{\"type\":\"m.login.dummy\",\"session\":\"$SESSION\"}}" \
  | sed -E 's/.*"access_token":"([^"]+)".*/\1/')

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
measure() { # name, wrk args...
  local name="$1"; shift
  local results=()
  for _ in $(seq "$RUNS"); do
    results+=("$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$@" | awk '/Requests\/sec/ {printf "%d", $2}')")
  done
  echo "$name: runs=${results[*]} median=$(printf '%s\n' "${results[@]}" | median) req/s"
}

echo "machine: $(nproc) cores, $(uname -m), $(date -u +%Y-%m-%d)"
echo "idle RSS after start: ${IDLE_RSS} KiB"
measure "GET /_matrix/client/versions" "$BASE/_matrix/client/versions"
measure "GET /_matrix/client/v3/account/whoami" -H "Authorization: Bearer $TOKEN" "$BASE/_matrix/client/v3/account/whoami"
echo "RSS after load: $(rss_kib) KiB"
