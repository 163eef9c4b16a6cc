#!/usr/bin/env bash
# Issue 23's benchmark: does a restart lose requests behind a production-style nginx?
#
# Three gatewayd nodes (release build, --shutdown-delay-ms 2000) on 127.0.0.1 behind nginx as a
# client-side balancer with nginx's default upstream settings (max_fails=1, fail_timeout=10s,
# proxy_next_upstream "error timeout") and upstream keep-alive (HTTP/1.1, `Connection ""`,
# keepalive 32). `gatewayctl loadtest --rate 2000` runs twice for DURATION (60 s):
#
#   A  rolling restart: each node in turn gets SIGTERM, is waited for, started again on its
#      data directory, and waited for until its /readyz answers 200; then the next node, but
#      not before nginx has taken the previous one back (PACE=balancer, the default): nginx
#      has no health checks, it marks a node down for fail_timeout (10 s) at its first refused
#      connection, and a restarting process refuses connections for the ~0.2 s between exit
#      and listen. Restarting faster than that leaves nginx with every node marked down at
#      once ("no live upstreams"), whatever the nodes do; PACE=readyz shows it.
#      Target: 0 failed requests.
#   B  a follower gets SIGKILL and is started again 5 s later, waited for on /readyz.
#      Target: failures only for requests that were in flight on the killed process.
#
# "Failed" is every request that did not get a 2xx: other statuses, timeouts, transport errors.
# Prints a table and, per scenario, the restart timeline, the seconds with failures and
# nginx's error log. With WRITE_RESULTS=1 the figures replace the "Rolling restart behind
# nginx" section of benches/RESULTS.md.
#
# Only 127.0.0.1 is used; everything is bounded in time (about 2.5 minutes); all processes and
# the temporary directory are removed on exit.
# Usage: benches/rolling_restart.sh   Knobs: RATE=2000 DURATION=60 PACE=balancer|readyz SKIP_BUILD=1 WRITE_RESULTS=1
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATE=${RATE:-2000}
export PACE=${PACE:-balancer}
# nginx's default fail_timeout, and a second of margin.
BALANCER_RETURN_SECS=11
DURATION=${DURATION:-60}
SHUTDOWN_DELAY_MS=2000
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ ! -x "$NGINX" ]; then
    echo "nginx missing: installing it with apt-get" >&2
    apt-get install -y nginx >/dev/null
fi

[ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && cargo build --quiet --release --bins)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
WORK=$(mktemp -d /tmp/gateway-roll.XXXXXX)
declare -A PID ADMIN HTTP PEER OPS
LOADTEST_PID=
cleanup() {
    [ -n "$LOADTEST_PID" ] && kill "$LOADTEST_PID" 2>/dev/null || true
    for i in "${!PID[@]}"; do kill -9 "${PID[$i]}" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
# Seconds since the current load run started, for the timeline.
since() { python3 -c "print(f'{$(now) - $T0:7.3f}')"; }
note() { echo "  $(since) s  $*" | tee -a "$WORK/timeline"; }

# Poll until a command succeeds, at most $1 seconds.
poll() {
    local limit=$1; shift
    local deadline=$(($(date +%s) + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out after ${limit}s: $*" >&2; return 1; }
        sleep 0.05
    done
}
ready() { [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:${OPS[$1]}/readyz")" = 200 ]; }
routes() { [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:${HTTP[$1]}/roll/ping")" = 200 ]; }
gone() { ! kill -0 "${PID[$1]}" 2>/dev/null; }

for i in 1 2 3; do ADMIN[$i]=$(port); HTTP[$i]=$(port); PEER[$i]=$(port); OPS[$i]=$(port); done
PEERS="1=127.0.0.1:${PEER[1]},2=127.0.0.1:${PEER[2]},3=127.0.0.1:${PEER[3]}"
start_node() {
    local i=$1
    RUST_LOG=${RUST_LOG:-warn} "$BIN/gatewayd" --node-id "$i" --data-dir "$WORK/node-$i" \
        --listen-admin "127.0.0.1:${ADMIN[$i]}" --listen-peer "127.0.0.1:${PEER[$i]}" \
        --listen-http "127.0.0.1:${HTTP[$i]}" --listen-ops "127.0.0.1:${OPS[$i]}" \
        --peers "$PEERS" --shutdown-delay-ms "$SHUTDOWN_DELAY_MS" 2>>"$WORK/node-$i.log" &
    PID[$i]=$!
}
for i in 1 2 3; do start_node "$i"; done
ctl() { "$BIN/gatewayctl" --endpoint "http://127.0.0.1:${ADMIN[$1]}" "${@:2}"; }

# The backend and the balancer: one nginx, one worker for each role's server block.
BACKEND=$(port)
LB=$(port)
mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx.conf" <<CONF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # The backend: a static 200.
    server { listen 127.0.0.1:$BACKEND; location / { return 200 "ok\n"; } }
    # The balancer, as a production nginx in front of the gateway: default max_fails=1,
    # fail_timeout=10s and proxy_next_upstream, upstream keep-alive.
    upstream gateway {
        server 127.0.0.1:${HTTP[1]};
        server 127.0.0.1:${HTTP[2]};
        server 127.0.0.1:${HTTP[3]};
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$LB;
        location / {
            proxy_pass http://gateway;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx.conf"

poll 60 ctl 1 cluster status
ctl 1 instance create --name roll --spec api.s2.large --region cn-hangzhou >/dev/null
ctl 1 group create --name roll --instance roll --base-path /roll >/dev/null
ctl 1 api create --group roll --name ping --method GET --path /ping \
    --backend "http://127.0.0.1:$BACKEND" >/dev/null
ctl 1 api deploy --group roll --name ping >/dev/null
for i in 1 2 3; do poll 30 routes "$i"; poll 30 ready "$i"; done
echo "3 nodes route /roll/ping; nginx balances on 127.0.0.1:$LB" >&2

# Run the load for DURATION in the background while $2 (a function) disturbs the cluster.
run_scenario() {
    local name=$1 action=$2
    : >"$WORK/timeline"
    local errlines
    errlines=$(wc -l <"$WORK/nginx/logs/error.log")
    T0=$(now)
    "$BIN/gatewayctl" loadtest --target "http://127.0.0.1:$LB/roll/ping" --rate "$RATE" \
        --duration "${DURATION}s" --json "$WORK/$name.json" --quiet &
    LOADTEST_PID=$!
    "$action"
    wait "$LOADTEST_PID" || true # a run with failures exits non-zero; the JSON says why
    LOADTEST_PID=
    cp "$WORK/timeline" "$WORK/$name.timeline"
    tail -n +"$((errlines + 1))" "$WORK/nginx/logs/error.log" >"$WORK/$name.nginx-errors"
}

# A: a rolling restart, paced by /readyz.
rolling_restart() {
    sleep 10 # steady state first
    local back_at=0
    for i in 1 2 3; do
        if [ "$PACE" = balancer ]; then
            while [ "$(date +%s)" -lt "$back_at" ]; do sleep 0.1; done
        fi
        note "SIGTERM node $i (pid ${PID[$i]})"
        kill -TERM "${PID[$i]}"
        poll 30 gone "$i"
        wait "${PID[$i]}" 2>/dev/null || true
        note "node $i exited"
        back_at=$(($(date +%s) + BALANCER_RETURN_SECS))
        start_node "$i"
        note "node $i started (pid ${PID[$i]})"
        poll 60 ready "$i"
        note "node $i /readyz 200"
    done
}

# B: SIGKILL a follower, start it again after 5 s.
kill_follower() {
    sleep 10 # steady state first
    local leader victim
    leader=$(ctl 1 cluster status -o json | python3 -c '
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
print(find(json.load(sys.stdin)))')
    for i in 3 2 1; do [ "$i" != "$leader" ] && { victim=$i; break; }; done
    note "leader is node $leader; SIGKILL follower node $victim (pid ${PID[$victim]})"
    kill -KILL "${PID[$victim]}"
    wait "${PID[$victim]}" 2>/dev/null || true
    sleep 5 # the outage the scenario asks for
    start_node "$victim"
    note "node $victim started (pid ${PID[$victim]})"
    poll 60 ready "$victim"
    note "node $victim /readyz 200"
}

echo "== A: rolling restart, ${DURATION}s at ${RATE}/s" >&2
run_scenario a rolling_restart
echo "== B: SIGKILL of a follower, restarted after 5 s, ${DURATION}s at ${RATE}/s" >&2
run_scenario b kill_follower

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$WORK" "$RATE" "$DURATION" "$LOAD" "${WRITE_RESULTS:-}" "$ROOT/benches/RESULTS.md" <<'PY'
import json, re, sys, datetime, subprocess
work, rate, duration, load, write, results = sys.argv[1:]
names = {"a": "A: rolling restart (SIGTERM; /readyz, then nginx's fail_timeout)" if __import__("os").environ.get("PACE", "balancer") == "balancer" else "A: rolling restart (SIGTERM, /readyz-paced only)", "b": "B: SIGKILL of a follower, restart after 5 s"}
rows, details = [], []
for key, title in names.items():
    r = json.load(open(f"{work}/{key}.json"))
    sent = sum(p["outcomes"]["sent"] for p in r["phases"])
    ok = sum(p["outcomes"]["ok_2xx"] for p in r["phases"])
    o = r["phases"][0]["outcomes"]
    p99 = max(p["latency"]["p99_ms"] for p in r["phases"])
    mx = max(p["latency"]["max_ms"] for p in r["phases"])
    kinds = ", ".join(f"{k} {o[k]}" for k in ("throttled_429", "other_4xx", "server_5xx", "other_status", "timeouts", "connection_errors") if o.get(k))
    rows.append((title, sent, sent - ok, p99, mx, kinds or "-"))
    bad = [f"{w['second']}s: {w['failed']} failed of {w['sent']}" for w in r["windows"] if w["failed"]]
    log = open(f"{work}/{key}.nginx-errors").read().splitlines()
    details.append((title, open(f"{work}/{key}.timeline").read().rstrip(), bad, log))
table = ["| scenario | requests sent | failed | p99 ms | max ms | failures by kind |", "|---|---|---|---|---|---|"]
table += [f"| {t} | {s} | **{f}** | {p:.2f} | {m:.1f} | {k} |" for t, s, f, p, m, k in rows]
print("\n".join(table))
for title, timeline, bad, log in details:
    print(f"\n{title}\n timeline (s since the load started):\n{timeline}")
    print(" seconds with failures: " + ("; ".join(bad) if bad else "none"))
    print(f" nginx error log ({len(log)} lines):")
    for line in log[:15]:
        print("   " + re.sub(r"^\S+ \S+ ", "", line))
if write:
    head = subprocess.run(["git", "-C", results.rsplit("/", 2)[0], "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    section = [
        "## Rolling restart behind nginx (issue 23)", "",
        f"`benches/rolling_restart.sh` (run {datetime.date.today().isoformat()}, commit {head}; release build): three gatewayd",
        "nodes with `--shutdown-delay-ms 2000` behind nginx with its default upstream settings",
        "(`max_fails=1`, `fail_timeout=10s`, `proxy_next_upstream error timeout`), upstream keep-alive",
        f"(`keepalive 32`, HTTP/1.1, `Connection \"\"`); `gatewayctl loadtest --rate {rate} --duration {duration}s`",
        f"through nginx to a static 200. Load average at the end: {load} on a shared 2-core machine.", "",
        *table, "",
    ]
    for title, timeline, bad, log in details:
        section += [f"{title}:", "", "```", timeline, "seconds with failures: " + ("; ".join(bad) if bad else "none"),
                    f"nginx error log: {len(log)} lines"] + ["  " + re.sub(r"^\S+ \S+ ", "", l)[:160] for l in log[:8]] + ["```", ""]
    text = open(results).read()
    pat = re.compile(r"^## Rolling restart behind nginx.*?(?=^## |\Z)", re.S | re.M)
    new = "\n".join(section) + "\n"
    text = pat.sub(lambda _: new, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + new
    open(results, "w").write(text)
    print(f"\nwrote the section to {results}")
PY
