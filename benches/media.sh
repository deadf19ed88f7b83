#!/usr/bin/env bash
# Benchmark for the media issue's targets, on a release build, over loopback with curl:
#   - upload and download of a 10 MiB file (MiB/s, median of RUNS);
#   - RSS growth while a 1 GiB file is uploaded (VmHWM after minus VmRSS before);
#   - a 256x256 thumbnail of a 4000x3000 JPEG: first request (generated) and cached ones.
# Usage: benches/media.sh [RUNS]        (needs curl; makes the JPEG with Pillow in a venv)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-7}"
PORT="${PORT:-18018}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ourwhats/target}"
cargo build --release --quiet
BIN="$CARGO_TARGET_DIR/release/ourwhats"
WORK="$(mktemp -d)"
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

if [ ! -x "$HOME/.cache/ourwhats/bench-venv/bin/python" ]; then
  python3 -m venv "$HOME/.cache/ourwhats/bench-venv"
  "$HOME/.cache/ourwhats/bench-venv/bin/pip" install -q pillow
fi
"$HOME/.cache/ourwhats/bench-venv/bin/python" - "$WORK/photo.jpg" <<'PY'
import sys
from PIL import Image
w, h = 4000, 3000
r = Image.linear_gradient("L").resize((w, h))
g = Image.radial_gradient("L").resize((w, h))
b = Image.effect_noise((w, h), 40)
Image.merge("RGB", (r, g, b)).save(sys.argv[1], quality=90)
PY

OURWHATS_DATA_DIR="$WORK/data" OURWHATS_CLIENT__LISTEN="127.0.0.1:$PORT" \
OURWHATS_FEDERATION__ENABLED=false OURWHATS_RATE_LIMITS__ENABLED=false \
OURWHATS_MEDIA__MAX_UPLOAD_SIZE=2G OURWHATS_LOGGING__LEVEL=warn "$BIN" serve &
PID=$!
BASE="http://127.0.0.1:$PORT"
for _ in $(seq 100); do curl -sf "$BASE/_matrix/client/versions" >/dev/null && break; sleep 0.1; done
SESSION=$(curl -s -XPOST "$BASE/_matrix/client/v3/register" -d '{"username":"bench","password":"bench-pw"}' \
  | sed -E 's/.*"session":"([^"]+)".*/\1/')
TOKEN=$(curl -s -XPOST "$BASE/_matrix/client/v3/register" \
  -d "{\"username\":\"bench\",\"password\":\"bench-pw\",\"auth\":{\"type\":\"m.login.dummy\",\"session\":\"$SESSION\"}}" \
  | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
AUTH="Authorization: Bearer $TOKEN"
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$PID/status"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
upload() { curl -s -XPOST -H "$AUTH" -H 'Content-Type: application/octet-stream' -T "$1" "$BASE/_matrix/media/v3/upload" \
  | sed -E 's/.*"mxc:\/\/([^"]+)".*/\1/'; }
# Prints the media id, then (on stderr) curl's own request time, which leaves out curl's start-up.
timed_upload() { curl -s -XPOST -H "$AUTH" -H 'Content-Type: application/octet-stream' -T "$1" \
  -w '\n%{time_total}\n' "$BASE/_matrix/media/v3/upload"; }

echo "machine: $(nproc) cores, $(uname -m), $(date -u +%Y-%m-%d)"

# RSS is sampled every 20 ms while the 1 GiB upload runs (VmHWM would include start-up).
head -c 1G /dev/urandom > "$WORK/big.bin"
BEFORE=$(kib VmRSS)
upload "$WORK/big.bin" > "$WORK/big.out" &
UP=$!
PEAK=$BEFORE
while kill -0 "$UP" 2>/dev/null; do
  now=$(kib VmRSS); [ "$now" -gt "$PEAK" ] && PEAK=$now; sleep 0.02
done
grep -q . "$WORK/big.out" || { echo "1 GiB upload failed" >&2; exit 1; }
echo "1 GiB upload: RSS before ${BEFORE} KiB, peak during ${PEAK} KiB, growth $((PEAK - BEFORE)) KiB"
rm "$WORK/big.bin"

up=(); down=()
for i in $(seq "$RUNS"); do
  head -c 10M /dev/urandom > "$WORK/ten.bin"
  out=$(timed_upload "$WORK/ten.bin")
  ID=$(echo "$out" | head -1 | sed -E 's/.*"mxc:\/\/([^"]+)".*/\1/')
  up+=("$(echo "10 / $(echo "$out" | tail -1)" | bc -l)")
  speed=$(curl -s -o /dev/null -w '%{speed_download}' -H "$AUTH" "$BASE/_matrix/client/v1/media/download/$ID")
  down+=("$(echo "$speed / 1048576" | bc -l)")
done
printf '10 MiB upload MiB/s: median %.0f (runs: %s)\n' "$(printf '%s\n' "${up[@]}" | median)" "$(printf '%.0f ' "${up[@]}")"
printf '10 MiB download MiB/s: median %.0f (runs: %s)\n' "$(printf '%s\n' "${down[@]}" | median)" "$(printf '%.0f ' "${down[@]}")"

ID=$(upload "$WORK/photo.jpg")
THUMB="$BASE/_matrix/client/v1/media/thumbnail/$ID?width=256&height=256&method=scale"
first=$(curl -s -o /dev/null -w '%{time_total}' -H "$AUTH" "$THUMB")
cached=()
for _ in $(seq "$RUNS"); do cached+=("$(curl -s -o /dev/null -w '%{time_total}' -H "$AUTH" "$THUMB")"); done
printf '4000x3000 JPEG (%s KiB) -> 256x256 scale thumbnail: first %.1f ms, cached median %.2f ms\n' \
  "$(( $(stat -c %s "$WORK/photo.jpg") / 1024 ))" "$(echo "$first * 1000" | bc -l)" \
  "$(echo "$(printf '%s\n' "${cached[@]}" | median) * 1000" | bc -l)"
