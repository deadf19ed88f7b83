#!/usr/bin/env bash
# The send path with and without pushers, two builds of ourwhats alternated round by round
# (docs/benchmarks.md, "The send path with pushers"). Each round runs both builds, each
# plain and with `--pushers` (every member of the room has a pusher to the load
# generator's gateway), a fresh server and data folder each run; the builds' order
# alternates by round. One JSON line per run on stdout, after its label.
# Usage: benches/push_rounds.sh OLD_BINARY NEW_BINARY [ROUNDS] [SECONDS]
# (release binaries of `ourwhats`; the load generator is the release `ourwhats-bench`).
set -u
cd "$(dirname "$0")/.."
OLD="$1"; NEW="$2"; ROUNDS="${3:-6}"; SECS="${4:-15}"
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/ourwhats/target}"
BENCH="${BENCH:-$TARGET/release/ourwhats-bench}"
PORT="${PORT:-18091}"
run() { # label binary [bench args]
  local label=$1 bin=$2; shift 2
  local dir; dir=$(mktemp -d)
  OURWHATS_DATA_DIR="$dir" OURWHATS_CLIENT__LISTEN="127.0.0.1:$PORT" \
  OURWHATS_FEDERATION__ENABLED=false OURWHATS_RATE_LIMITS__ENABLED=false OURWHATS_LOGGING__LEVEL=warn \
  OURWHATS_FEDERATION__IP_RANGE_ALLOWLIST=127.0.0.0/8 \
  OURWHATS_FEDERATION__TRUSTED_CA=benches/ourwhats-bench/gateway-tls/ca.crt \
    "$bin" serve > "$dir.log" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$PORT/_matrix/client/versions" >/dev/null && break; sleep 0.1; done
  echo "$label $("$BENCH" --base "http://127.0.0.1:$PORT" --server-pid $pid send --seconds "$SECS" "$@" 2>/dev/null | tail -1)"
  kill $pid; wait $pid 2>/dev/null
  rm -rf "$dir" "$dir.log"
}
for r in $(seq "$ROUNDS"); do
  echo "# round $r"
  if [ $((r % 2)) -eq 1 ]; then
    run old_plain "$OLD"; run old_push "$OLD" --pushers; run new_plain "$NEW"; run new_push "$NEW" --pushers
  else
    run new_plain "$NEW"; run new_push "$NEW" --pushers; run old_plain "$OLD"; run old_push "$OLD" --pushers
  fi
done
