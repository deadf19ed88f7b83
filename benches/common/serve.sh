# Sourced by the benchmark scripts: builds the release server and the load generator
# named $1, starts the server on $PORT with a fresh data folder (stopped and removed at
# exit), and sets LOAD (the generator's binary), PID and BASE.
bench_serve() {
    local bench="$1"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ourwhats/target}"
    cargo build --release --quiet
    cargo bench --quiet --bench "$bench" --no-run
    LOAD=$(ls -t "$CARGO_TARGET_DIR"/release/deps/"$bench"-* | grep -v '\.d$' | head -1)
    local bin="$CARGO_TARGET_DIR/release/ourwhats"
    DATA="$(mktemp -d)"
    trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DATA"' EXIT
    OURWHATS_DATA_DIR="$DATA" OURWHATS_CLIENT__LISTEN="127.0.0.1:$PORT" \
    OURWHATS_FEDERATION__ENABLED=false OURWHATS_RATE_LIMITS__ENABLED=false \
    OURWHATS_LOGGING__LEVEL=warn "$bin" serve &
    PID=$!
    BASE="http://127.0.0.1:$PORT"
    for _ in $(seq 100); do curl -sf "$BASE/_matrix/client/versions" >/dev/null && break; sleep 0.1; done
    echo "machine: $(nproc) cores, $(uname -m), $(date -u +%Y-%m-%d)"
}
