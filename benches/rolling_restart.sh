#!/usr/bin/env bash
# Issues 23 and 20: does the data plane keep serving, behind a production-style nginx, while
# nodes restart, die and are cut off from each other?
#
# Three gatewayd nodes (release build, --shutdown-delay-ms 2000), each in its own network
# namespace on a bridge (addresses from 198.18.0.0/15, the same scheme and names as
# testkit::netns, so a killed run is swept by the next test), behind nginx in the root
# namespace as a client-side balancer with nginx's default upstream settings (max_fails=1,
# fail_timeout=10s, proxy_next_upstream "error timeout") and upstream keep-alive (HTTP/1.1,
# `Connection ""`, keepalive 32). `gatewayctl loadtest --rate 2000` runs once per scenario for
# DURATION (60 s); the disturbance starts after 10 s of steady state:
#
#   a  rolling restart: each node in turn gets SIGTERM, is waited for, started again on its
#      data directory, and waited for until its /readyz answers 200; then the next node, but
#      not before nginx has taken the previous one back (PACE=balancer, the default): nginx
#      has no health checks, it marks a node down for fail_timeout (10 s) at its first refused
#      connection, and a restarting process refuses connections for the ~0.2 s between exit
#      and listen. Restarting faster than that leaves nginx with every node marked down at
#      once ("no live upstreams"), whatever the nodes do; PACE=readyz shows it.
#      Target: 0 failed requests.
#   b  a follower gets SIGKILL and is started again 5 s later, waited for on /readyz.
#      Target: failures only for requests that were in flight on the killed process.
#   c  minority partition: a follower is cut off from both other nodes for 15 s (iptables in
#      its namespace; nginx still reaches it), then healed. Target: 0 failed requests.
#   d  the leader is cut off from both other nodes for 15 s (they elect another), then
#      healed. Target: 0 failed requests.
#   e  the leader gets SIGKILL and is started again 5 s later. Target: failures only for
#      requests that were in flight on the killed process.
#
# "Failed" is every request that did not get a 2xx: other statuses, timeouts, transport errors.
# Per scenario it also counts, from each node's /metrics, the requests that node served while
# the scenario ran (so a node that stopped serving shows), and prints the timeline, the seconds
# with failures and nginx's error log. With WRITE_RESULTS=1 the figures replace the "Rolling
# restart, kills and partitions behind nginx" section of benches/RESULTS.md.
#
# Needs root, iproute2 and iptables. Traffic stays on the bridge and 127.0.0.1; everything is
# bounded in time (about 1.2 minutes per scenario); processes, namespaces, links and the
# temporary directory are removed on exit.
# Usage: benches/rolling_restart.sh   Knobs: SCENARIOS="a b c d e" RATE=2000 DURATION=60
#        PACE=balancer|readyz SKIP_BUILD=1 WRITE_RESULTS=1
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATE=${RATE:-2000}
SCENARIOS=${SCENARIOS:-a b c d e}
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
# Names as testkit::netns makes them: a run killed before its cleanup is swept by the next test.
TAG=gwnet-$$
BRIDGE= SUBNET=
declare -A PID IP NS VETH
LOADTEST_PID=
cleanup() {
    [ -n "$LOADTEST_PID" ] && kill "$LOADTEST_PID" 2>/dev/null || true
    for i in "${!PID[@]}"; do kill -9 "${PID[$i]}" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    for i in "${!NS[@]}"; do
        ip netns del "${NS[$i]}" 2>/dev/null || true
        ip link del "${VETH[$i]}" 2>/dev/null || true
    done
    [ -n "$BRIDGE" ] && ip link del "$BRIDGE" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A bridge with a free /24 of 198.18.0.0/15 (creating the bridge claims it), and one namespace
# per node on it: node i is $SUBNET.(10+i).
for k in $(seq 0 511); do
    idx=$(( ($$ + k) % 512 ))
    ip link add "gk${idx}br" type bridge 2>/dev/null || continue
    if [ "$idx" -lt 256 ]; then SUBNET=198.18.$idx; else SUBNET=198.19.$((idx - 256)); fi
    BRIDGE=gk${idx}br
    ip link set "$BRIDGE" alias "$TAG"
    if [ -n "$(ip -4 route show table all root "$SUBNET.0/24")" ]; then
        ip link del "$BRIDGE"; BRIDGE=; continue
    fi
    break
done
[ -n "$BRIDGE" ] || { echo "no free /24 in 198.18.0.0/15" >&2; exit 1; }
ip addr add "$SUBNET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
for i in 1 2 3; do
    NS[$i]=$TAG-h$i VETH[$i]=${BRIDGE%br}v$i IP[$i]=$SUBNET.$((10 + i))
    ip netns add "${NS[$i]}"
    ip link add "${VETH[$i]}" type veth peer name "${BRIDGE%br}c$i" netns "${NS[$i]}"
    ip link set "${VETH[$i]}" alias "$TAG"
    ip link set "${VETH[$i]}" master "$BRIDGE"
    ip link set "${VETH[$i]}" up
    ip -n "${NS[$i]}" link set "${BRIDGE%br}c$i" name eth0
    ip -n "${NS[$i]}" addr add "${IP[$i]}/24" dev eth0
    ip -n "${NS[$i]}" link set eth0 up
    ip -n "${NS[$i]}" link set lo up
done
# Node i no longer hears node j (iptables in i's namespace; the root namespace, where nginx
# and the load run, is never cut).
cut_one_way() { ip netns exec "${NS[$2]}" iptables -w -A INPUT -s "${IP[$1]}" -j DROP; }
isolate() { for j in 1 2 3; do [ "$j" = "$1" ] || { cut_one_way "$1" "$j"; cut_one_way "$j" "$1"; }; done; }
heal() { for j in 1 2 3; do ip netns exec "${NS[$j]}" iptables -w -F INPUT; done; }

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
ready() { [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://${IP[$1]}:9100/readyz")" = 200 ]; }
routes() { [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://${IP[$1]}:8080/roll/ping")" = 200 ]; }
gone() { ! kill -0 "${PID[$1]}" 2>/dev/null; }
# The data-plane requests node $1 has answered (its /metrics), or "down".
served() {
    curl -s -m 1 "http://${IP[$1]}:9100/metrics" | awk '/^gateway_requests_total/ { n += $NF } END { if (NR) printf "%d\n", n; else print "down" }'
}

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/token"
PEERS="1=${IP[1]}:9200,2=${IP[2]}:9200,3=${IP[3]}:9200"
start_node() {
    local i=$1
    # `ip netns exec` execs gatewayd, so $! is the node's own pid.
    RUST_LOG=${RUST_LOG:-warn} ip netns exec "${NS[$i]}" "$BIN/gatewayd" --node-id "$i" \
        --data-dir "$WORK/node-$i" --listen-admin "${IP[$i]}:9090" --listen-peer "${IP[$i]}:9200" \
        --listen-http "${IP[$i]}:8080" --listen-ops "${IP[$i]}:9100" --peers "$PEERS" \
        --admin-token-file "$WORK/token" --peer-plaintext --admin-plaintext \
        --shutdown-delay-ms "$SHUTDOWN_DELAY_MS" 2>>"$WORK/node-$i.log" &
    PID[$i]=$!
}
for i in 1 2 3; do start_node "$i"; done
ctl() { "$BIN/gatewayctl" --endpoint "http://${IP[$1]}:9090" --token-file "$WORK/token" "${@:2}"; }
# The leader's node id as node $1 sees it.
leader() {
    ctl "$1" cluster status -o json | python3 -c '
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

# The backend and the balancer: one nginx, one worker for each role's server block.
LB=$(port)
mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx.conf" <<CONF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # The backend, on the bridge so that the nodes reach it: a static 200.
    server { listen $SUBNET.1:8000; location / { return 200 "ok\n"; } }
    # The balancer, as a production nginx in front of the gateway: default max_fails=1,
    # fail_timeout=10s and proxy_next_upstream, upstream keep-alive.
    upstream gateway {
        server ${IP[1]}:8080;
        server ${IP[2]}:8080;
        server ${IP[3]}:8080;
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
    --backend "http://$SUBNET.1:8000" >/dev/null
ctl 1 api deploy --group roll --name ping >/dev/null
for i in 1 2 3; do poll 30 routes "$i"; poll 30 ready "$i"; done
echo "3 nodes on $SUBNET.0/24 route /roll/ping; nginx balances on 127.0.0.1:$LB" >&2

# Run the load for DURATION in the background while $2 (a function) disturbs the cluster.
run_scenario() {
    local name=$1 action=$2
    : >"$WORK/timeline"
    local errlines before
    errlines=$(wc -l <"$WORK/nginx/logs/error.log")
    before=$(for i in 1 2 3; do served "$i"; done | paste -sd' ')
    T0=$(now)
    "$BIN/gatewayctl" loadtest --target "http://127.0.0.1:$LB/roll/ping" --rate "$RATE" \
        --duration "${DURATION}s" --json "$WORK/$name.json" --quiet &
    LOADTEST_PID=$!
    "$action"
    wait "$LOADTEST_PID" || true # a run with failures exits non-zero; the JSON says why
    LOADTEST_PID=
    # Each node's requests served during the run (a restarted node counts from its restart).
    echo "$before" >"$WORK/$name.served"
    for i in 1 2 3; do served "$i"; done | paste -sd' ' >>"$WORK/$name.served"
    cp "$WORK/timeline" "$WORK/$name.timeline"
    tail -n +"$((errlines + 1))" "$WORK/nginx/logs/error.log" >"$WORK/$name.nginx-errors"
}

# Waits for a leader that every node agrees on, and prints it.
settled_leader() {
    local l deadline=$(($(date +%s) + 30))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        l=$(leader 1 2>/dev/null || true)
        if [ -n "$l" ] && [ "$l" != None ] && [ "$(leader 2 2>/dev/null)" = "$l" ] && [ "$(leader 3 2>/dev/null)" = "$l" ]; then
            echo "$l"; return 0
        fi
        sleep 0.2
    done
    echo "no settled leader after 30 s" >&2; return 1
}
# What node $1 says of the leader; `cluster status` fails when the node has no quorum contact.
view() {
    local l
    if l=$(leader "$1" 2>/dev/null); then echo "follows leader $l"; else echo "knows leader ${l:-none} but has no contact with a quorum"; fi
}
follower_of() { for i in 3 2 1; do [ "$i" != "$1" ] && { echo "$i"; return; }; done; }

# a: a rolling restart, paced by /readyz (and nginx's fail_timeout with PACE=balancer).
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

# SIGKILL node $1, start it again after 5 s and wait for its /readyz.
kill_and_restart() {
    local victim=$1
    kill -KILL "${PID[$victim]}"
    wait "${PID[$victim]}" 2>/dev/null || true
    note "node $victim killed"
    sleep 5 # the outage the scenario asks for
    start_node "$victim"
    note "node $victim started (pid ${PID[$victim]})"
    poll 60 ready "$victim"
    note "node $victim /readyz 200"
}

# b: SIGKILL a follower, start it again after 5 s.
kill_follower() {
    sleep 10 # steady state first
    local l victim
    l=$(settled_leader); victim=$(follower_of "$l")
    note "leader is node $l; SIGKILL follower node $victim (pid ${PID[$victim]})"
    kill_and_restart "$victim"
}

# e: SIGKILL the leader, start it again after 5 s.
kill_leader() {
    sleep 10
    local l
    l=$(settled_leader)
    note "SIGKILL the leader, node $l (pid ${PID[$l]})"
    kill_and_restart "$l"
    note "leader now node $(settled_leader)"
}

# Cut node $1 off from the other two for 15 s, then heal and wait for one leader again.
isolate_for_15s() {
    isolate "$1"
    note "node $1 cut off from both other nodes"
    sleep 15 # the partition the scenario asks for
    local other
    other=$(follower_of "$1")
    note "during the cut: node $1 $(view "$1"); node $other $(view "$other")"
    heal
    note "healed"
    note "leader now node $(settled_leader)"
}

# c: a minority partition of one follower.
partition_follower() {
    sleep 10
    local l
    l=$(settled_leader)
    isolate_for_15s "$(follower_of "$l")"
}

# d: the leader alone in the minority.
partition_leader() {
    sleep 10
    local l
    l=$(settled_leader)
    note "the leader is node $l"
    isolate_for_15s "$l"
}

declare -A ACTION=([a]=rolling_restart [b]=kill_follower [c]=partition_follower [d]=partition_leader [e]=kill_leader)
for s in $SCENARIOS; do
    [ -n "${ACTION[$s]:-}" ] || { echo "unknown scenario '$s' (a b c d e)" >&2; exit 2; }
    echo "== $s: ${ACTION[$s]}, ${DURATION}s at ${RATE}/s" >&2
    run_scenario "$s" "${ACTION[$s]}"
done

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$WORK" "$RATE" "$DURATION" "$LOAD" "${WRITE_RESULTS:-}" "$ROOT/benches/RESULTS.md" "$SCENARIOS" <<'PY'
import json, os, re, sys, datetime, subprocess
work, rate, duration, load, write, results, scenarios = sys.argv[1:]
titles = {
    "a": "a: rolling restart (SIGTERM; /readyz, then nginx's fail_timeout)" if os.environ.get("PACE", "balancer") == "balancer" else "a: rolling restart (SIGTERM, /readyz-paced only)",
    "b": "b: SIGKILL of a follower, restart after 5 s",
    "c": "c: a follower cut off from the other nodes for 15 s",
    "d": "d: the leader cut off from the other nodes for 15 s",
    "e": "e: SIGKILL of the leader, restart after 5 s",
}
rows, details = [], []
for key in scenarios.split():
    title = titles[key]
    r = json.load(open(f"{work}/{key}.json"))
    sent = sum(p["outcomes"]["sent"] for p in r["phases"])
    ok = sum(p["outcomes"]["ok_2xx"] for p in r["phases"])
    o = r["phases"][0]["outcomes"]
    p99 = max(p["latency"]["p99_ms"] for p in r["phases"])
    mx = max(p["latency"]["max_ms"] for p in r["phases"])
    kinds = ", ".join(f"{k} {o[k]}" for k in ("throttled_429", "other_4xx", "server_5xx", "other_status", "timeouts", "connection_errors") if o.get(k))
    before, after = [l.split() for l in open(f"{work}/{key}.served").read().splitlines()]
    def delta(b, a):
        if a == "down": return "down"
        if b == "down" or int(a) < int(b): return f"{a} (since restart)"
        return str(int(a) - int(b))
    served = " / ".join(delta(b, a) for b, a in zip(before, after))
    lag = r["generator"]["p99_lag_ms"]
    rows.append((title, sent, sent - ok, p99, mx, lag, kinds or "-", served))
    bad = [f"{w['second']}s: {w['failed']} failed of {w['sent']}" for w in r["windows"] if w["failed"]]
    log = open(f"{work}/{key}.nginx-errors").read().splitlines()
    details.append((title, open(f"{work}/{key}.timeline").read().rstrip(), bad, log))
# Latency counts from each request's scheduled send time, so a generator that falls behind on a
# busy machine shows as latency: its own p99 lag is printed beside it.
table = ["| scenario | requests sent | failed | p99 ms | max ms | generator p99 lag ms | failures by kind | served by node 1 / 2 / 3 |", "|---|---|---|---|---|---|---|---|"]
table += [f"| {t} | {s} | **{f}** | {p:.2f} | {m:.1f} | {g:.1f} | {k} | {v} |" for t, s, f, p, m, g, k, v in rows]
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
        "## Rolling restart, kills and partitions behind nginx (issues 23, 20)", "",
        f"`benches/rolling_restart.sh` (run {datetime.date.today().isoformat()}, commit {head}; release build): three gatewayd",
        "nodes with `--shutdown-delay-ms 2000`, each in its own network namespace on a bridge,",
        "behind nginx with its default upstream settings (`max_fails=1`, `fail_timeout=10s`,",
        "`proxy_next_upstream error timeout`) and upstream keep-alive (`keepalive 32`, HTTP/1.1,",
        f"`Connection \"\"`); `gatewayctl loadtest --rate {rate} --duration {duration}s` through nginx to a",
        "static 200; partitions are iptables rules in a node's namespace (nginx still reaches every node).",
        f"Load average at the end: {load} on a shared 2-core machine.", "",
        *table, "",
    ]
    for title, timeline, bad, log in details:
        section += [f"{title}:", "", "```", timeline, "seconds with failures: " + ("; ".join(bad) if bad else "none"),
                    f"nginx error log: {len(log)} lines"] + ["  " + re.sub(r"^\S+ \S+ ", "", l)[:160] for l in log[:8]] + ["```", ""]
    text = open(results).read()
    pat = re.compile(r"^## Rolling restart(, kills and partitions)? behind nginx.*?(?=^## |\Z)", re.S | re.M)
    new = "\n".join(section) + "\n"
    text = pat.sub(lambda _: new, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + new
    open(results, "w").write(text)
    print(f"\nwrote the section to {results}")
PY
