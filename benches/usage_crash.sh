#!/usr/bin/env bash
# Issue 16's fault benchmark for metering: are answered calls billed, once, across SIGKILLs?
#
# Three gatewayd nodes on 127.0.0.1 (default settings: usage journalled every 100 ms,
# committed every 1000 ms). `gatewayctl loadtest --rate RATE` sends steady load for DURATION
# seconds straight to the three nodes' data planes. Meanwhile:
#
#   at 10 s  a follower gets SIGKILL; it is started again on its data dir 5 s later;
#   at 25 s  the leader gets SIGKILL; it is started again 5 s later.
#
# Then, once the metered count has stopped moving, compares:
#   answered  responses the client received (any status): calls the gateway counted;
#   billed    calls in the replicated usage the bills are computed from (`gatewayctl usage`);
#   in flight requests with no response (connection errors, timeouts), on the killed nodes.
# Targets: lost = answered - billed <= 0.1% of answered; billed <= answered + in flight (a
# request the killed node received may be counted without its answer arriving: it is not
# counted twice).
#
# Only 127.0.0.1 is used; everything is bounded in time (about DURATION + 90 s); processes and
# the temporary directory are removed on exit. The debug build is enough: the figures are
# ratios, not throughput.
# Usage: benches/usage_crash.sh   Knobs: RATE=500 DURATION=45 PROFILE=debug|release SKIP_BUILD=1
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATE=${RATE:-500}
DURATION=${DURATION:-45}
PROFILE=${PROFILE:-debug}
if [ -z "${SKIP_BUILD:-}" ]; then
    if [ "$PROFILE" = release ]; then
        (cd "$ROOT" && cargo build --quiet --release --bins)
    else
        (cd "$ROOT" && cargo build --quiet --bins)
    fi
fi
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
WORK=$(mktemp -d /tmp/gateway-usage-crash.XXXXXX)
declare -A PID ADMIN HTTP PEER OPS
LOADTEST_PID=
BACKEND_PID=
cleanup() {
    [ -n "$LOADTEST_PID" ] && kill "$LOADTEST_PID" 2>/dev/null || true
    [ -n "$BACKEND_PID" ] && kill "$BACKEND_PID" 2>/dev/null || true
    for i in "${!PID[@]}"; do kill -9 "${PID[$i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $T0:7.3f}')"; }
note() { echo "  $(since) s  $*" | tee -a "$WORK/timeline" >&2; }
poll() {
    local limit=$1; shift
    local deadline=$(($(date +%s) + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out after ${limit}s: $*" >&2; return 1; }
        sleep 0.05
    done
}
routes() { [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:${HTTP[$1]}/bench/ping")" = 200 ]; }
ready() { [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:${OPS[$1]}/readyz")" = 200 ]; }

for i in 1 2 3; do ADMIN[$i]=$(port); HTTP[$i]=$(port); PEER[$i]=$(port); OPS[$i]=$(port); done
PEERS="1=127.0.0.1:${PEER[1]},2=127.0.0.1:${PEER[2]},3=127.0.0.1:${PEER[3]}"
start_node() {
    local i=$1
    RUST_LOG=${RUST_LOG:-warn} "$BIN/gatewayd" --node-id "$i" --data-dir "$WORK/node-$i" \
        --listen-admin "127.0.0.1:${ADMIN[$i]}" --listen-peer "127.0.0.1:${PEER[$i]}" \
        --listen-http "127.0.0.1:${HTTP[$i]}" --listen-ops "127.0.0.1:${OPS[$i]}" \
        --peers "$PEERS" 2>>"$WORK/node-$i.log" &
    PID[$i]=$!
}
for i in 1 2 3; do start_node "$i"; done
ctl() { "$BIN/gatewayctl" --endpoint "http://127.0.0.1:${ADMIN[$1]}" "${@:2}"; }
# Through whichever node answers (one may be down).
ctl_any() {
    local i
    for i in 1 2 3; do ctl "$i" "$@" 2>/dev/null && return 0; done
    return 1
}

# The backend: a static 200 on a bare Python HTTP/1.1 server (keep-alive).
BACKEND=$(port)
python3 - "$BACKEND" 2>"$WORK/backend.log" <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "3"); self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
BACKEND_PID=$!

poll 60 ctl 1 cluster status
ctl 1 account create --name bench >/dev/null
ctl 1 group create --name bench --account bench --base-path /bench >/dev/null
ctl 1 api create --group bench --name ping --method GET --path /ping \
    --backend "http://127.0.0.1:$BACKEND" >/dev/null
ctl 1 api deploy --group bench --name ping >/dev/null
for i in 1 2 3; do poll 30 routes "$i"; done

metered() {
    ctl_any usage --account bench -o json | python3 -c '
import json, sys
print(sum(r["calls"] for r in json.load(sys.stdin)))'
}
# Polls until the metered count has not moved for 4 s (every node commits each second).
settled() {
    local last=-1 same=0 m deadline=$(($(date +%s) + 90))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        m=$(metered 2>/dev/null || echo -1)
        if [ "$m" = "$last" ] && [ "$m" != -1 ]; then same=$((same + 1)); else same=0; fi
        last=$m
        [ "$same" -ge 8 ] && { echo "$m"; return 0; }
        sleep 0.5
    done
    echo "the metered count did not settle" >&2
    return 1
}
leader() {
    ctl_any cluster status -o json | python3 -c '
import json, sys
def find(v):
    if isinstance(v, dict):
        if v.get("leader_id") is not None: return v["leader_id"]
        for x in v.values():
            r = find(x)
            if r is not None: return r
    if isinstance(v, list):
        for x in v:
            r = find(x)
            if r is not None: return r
print(find(json.load(sys.stdin)))'
}

BEFORE=$(settled)
echo "3 nodes route /bench/ping; $BEFORE calls metered before the run" >&2

T0=$(now)
"$BIN/gatewayctl" loadtest \
    --target "http://127.0.0.1:${HTTP[1]}/bench/ping" \
    --target "http://127.0.0.1:${HTTP[2]}/bench/ping" \
    --target "http://127.0.0.1:${HTTP[3]}/bench/ping" \
    --rate "$RATE" --duration "${DURATION}s" --json "$WORK/load.json" --quiet &
LOADTEST_PID=$!

kill_and_restart() {
    local victim=$1 what=$2
    note "SIGKILL $what node $victim (pid ${PID[$victim]})"
    kill -KILL "${PID[$victim]}"
    wait "${PID[$victim]}" 2>/dev/null || true
    sleep 5 # the outage
    start_node "$victim"
    note "node $victim started again on its data dir"
    poll 60 ready "$victim"
    note "node $victim ready"
}
sleep 10 # steady state first
L=$(leader)
for i in 3 2 1; do [ "$i" != "$L" ] && { F=$i; break; }; done
kill_and_restart "$F" follower
sleep 5
L=$(leader)
kill_and_restart "$L" leader
wait "$LOADTEST_PID" || true # a run with refused requests exits non-zero; the JSON says why
LOADTEST_PID=
AFTER=$(settled)

python3 - "$WORK/load.json" "$BEFORE" "$AFTER" "$RATE" "$DURATION" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
before, after, rate, duration = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
answered = inflight = 0
for p in report["phases"]:
    o = p["outcomes"]
    answered += o["ok_2xx"] + o["throttled_429"] + o["other_4xx"] + o["server_5xx"] + o["other_status"]
    inflight += o["timeouts"] + o["connection_errors"]
billed = after - before
lost = max(0, answered - billed)
extra = max(0, billed - answered)
print(f"usage_crash: {rate}/s for {duration}s on 3 nodes; SIGKILL of a follower, then of the leader")
print(f"  answered (client side)      {answered}")
print(f"  no response (killed nodes)  {inflight}")
print(f"  billed (replicated usage)   {billed}")
print(f"  answered but not billed     {lost}  ({100 * lost / max(1, answered):.4f}%)")
print(f"  billed beyond answered      {extra}  (at most the {inflight} without a response)")
ok = lost * 1000 <= answered and billed <= answered + inflight
print("  PASS" if ok else "  FAIL: target lost <= 0.1% and billed <= answered + no response")
sys.exit(0 if ok else 1)
PY
