#!/usr/bin/env bash
# The SLA check of a 3-node cluster: `gatewayctl loadtest --spec api.s1.small` against three
# local gatewayd nodes (release build) in front of nginx serving a static 200, with a spec
# change to api.s1.medium mid-run. Writes the report to docs/sla-api.s1.small.json and the
# picture to docs/sla-api.s1.small.svg, and prints the summary.
#
# Only 127.0.0.1 is loaded; the run is bounded in time (about a minute).
# Usage: benches/sla.sh     Knobs: RAMP=5s SUSTAIN=20s OVERLOAD=20s MODIFY_AT=35s
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RAMP=${RAMP:-5s}
SUSTAIN=${SUSTAIN:-20s}
OVERLOAD=${OVERLOAD:-20s}
MODIFY_AT=${MODIFY_AT:-35s}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is needed: apt-get install -y nginx" >&2; exit 2; }

(cd "$ROOT" && cargo build --quiet --release --bins)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
WORK=$(mktemp -d /tmp/gateway-sla.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The backend: nginx, one worker, a static 200.
BACKEND=$(port)
mkdir -p "$WORK/nginx/logs"
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx/logs/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    server { listen 127.0.0.1:$BACKEND; location / { return 200 "ok\n"; } }
}
CONF
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx.conf"

# Three nodes.
declare -A ADMIN HTTP PEER OPS
for i in 1 2 3; do ADMIN[$i]=$(port); HTTP[$i]=$(port); PEER[$i]=$(port); OPS[$i]=$(port); done
PEERS="1=127.0.0.1:${PEER[1]},2=127.0.0.1:${PEER[2]},3=127.0.0.1:${PEER[3]}"
for i in 1 2 3; do
    RUST_LOG=warn "$BIN/gatewayd" --node-id "$i" --data-dir "$WORK/node-$i" \
        --listen-admin "127.0.0.1:${ADMIN[$i]}" --listen-peer "127.0.0.1:${PEER[$i]}" \
        --listen-http "127.0.0.1:${HTTP[$i]}" --listen-ops "127.0.0.1:${OPS[$i]}" \
        --peers "$PEERS" 2>"$WORK/node-$i.log" &
    PIDS+=($!)
done
CTL=("$BIN/gatewayctl" --endpoint "http://127.0.0.1:${ADMIN[1]}")
for _ in $(seq 100); do "${CTL[@]}" cluster status >/dev/null 2>&1 && break; sleep 0.2; done
"${CTL[@]}" instance create --name sla --spec api.s1.small --region cn-hangzhou >/dev/null
"${CTL[@]}" group create --name bench --instance sla >/dev/null
"${CTL[@]}" api create --group bench --name ping --method GET --path /ping --backend "http://127.0.0.1:$BACKEND" >/dev/null
"${CTL[@]}" api deploy --group bench --name ping >/dev/null
for i in 1 2 3; do
    for _ in $(seq 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${HTTP[$i]}/ping")" = 200 ] && break
        sleep 0.1
    done
done

mkdir -p "$ROOT/docs"
echo "load test: api.s1.small, 3 nodes, spec change to api.s1.medium at $MODIFY_AT" >&2
set +e
"${CTL[@]}" loadtest --spec api.s1.small \
    --target "http://127.0.0.1:${HTTP[1]}/ping" --target "http://127.0.0.1:${HTTP[2]}/ping" \
    --target "http://127.0.0.1:${HTTP[3]}/ping" \
    --ramp "$RAMP" --sustain "$SUSTAIN" --overload "$OVERLOAD" \
    --modify-spec-at "$MODIFY_AT" --to api.s1.medium --instance sla \
    --json "$ROOT/docs/sla-api.s1.small.json" --svg "$ROOT/docs/sla-api.s1.small.svg" --quiet
rc=$?
set -e
echo "gatewayctl loadtest exited $rc (0: every verdict passed)"
exit $rc
