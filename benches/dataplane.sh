#!/usr/bin/env bash
# Data plane benchmark: limiter accuracy across a 3-node cluster, spec change, proxy overhead.
#
# Everything runs on 127.0.0.1 on free ports, with its own temp dirs; every run is bounded.
#
# a. Accuracy. Three gatewayd nodes (release build), a dedicated api.s1.small instance
#    (2,500 req/s cluster-wide) and one API in front of an nginx backend serving a static 200.
#    The loadtest crate's open-loop generator offers 2x the ceiling (5,000 req/s), spread evenly
#    over the nodes, then 80/10/10. Printed: the cluster-wide admitted (2xx) count of every 1 s
#    window against 2,500 (target: within 2%), and the generator's achieved send rate.
#    Then the same two loads again with `instance modify-spec --spec api.s1.medium` (5,000 req/s)
#    called mid-run: printed is the time from the call until the admitted rate reaches 5,000
#    (the start of the first 100 ms window, sliding in 10 ms steps, that admits >= 98% of
#    5,000/s, counted by arrival at the backend; the 1 s after that point is printed too), and
#    the 1 s windows before and after.
# b. Overhead. One gatewayd node with its limiter on (shared ceiling 1,000,000 req/s, far above
#    the offered load) against nginx as a reverse proxy to the same backend (2 worker processes,
#    as gatewayd has 2 data-plane threads, --http-threads 2; keep-alive to the upstream), with
#    wrk, same threads and connections, alternating, ROUNDS times each. Printed: requests/s and
#    p50/p99 latency of every round, the proxy's CPU time per request (user + system, from
#    /proc), the medians and their ratios, and each round's gatewayd figures against the nginx
#    round run right after it (paired: a slow spell of the machine hits both). Then latency at the same open-loop rate through each
#    (OVERHEAD_RATE req/s, below both maxima), with the generator. BASELINE_GATEWAYD=path adds
#    a second gatewayd node running that binary (e.g. a build of an older commit) to the
#    closed-loop rounds, to compare two builds in the same run.
#
# Needs nginx, wrk, curl and python3 (installs nginx and wrk with apt-get when missing and root).
#
# Usage: benches/dataplane.sh
# Knobs: RUN_SECS=10 CHANGE_AT=4 CONNECTIONS=64 ROUNDS=5 WRK_SECS=10 WRK_THREADS=2
#        WRK_CONNECTIONS=64 OVERHEAD_RATE=10000 SKIP_BUILD=0 ONLY= (ONLY=overhead: part b only)
#        BASELINE_GATEWAYD= (path of another gatewayd binary for part b)
#        ACCESS_LOG=0 (1: part b's gatewayd writes an access log file, and the baseline is the
#        same binary without one: the access log's cost, measured in the same run)
#        THROTTLE_POLICY=0 (1: part b's gatewayd has a throttling policy bound to the bench API,
#        per second, limits far above the offered load, and the baseline is the same binary
#        without one: a bound policy's cost, measured in the same run; UNIT=minute for a window
#        policy, which takes leases)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN_SECS=${RUN_SECS:-10}
CHANGE_AT=${CHANGE_AT:-4}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-5}
WRK_SECS=${WRK_SECS:-10}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
OVERHEAD_RATE=${OVERHEAD_RATE:-10000}
SKIP_BUILD=${SKIP_BUILD:-0}
ONLY=${ONLY:-}
BASELINE_GATEWAYD=${BASELINE_GATEWAYD:-}
ACCESS_LOG=${ACCESS_LOG:-0}
THROTTLE_POLICY=${THROTTLE_POLICY:-0}
UNIT=${UNIT:-second}
SMALL=2500
MEDIUM=5000
OFFERED=5000

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if ! have nginx || ! have wrk; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing nginx and wrk" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
    else
        echo "nginx and wrk are needed: apt-get install -y nginx wrk" >&2
        exit 2
    fi
fi
for tool in python3 curl setsid; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 2; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$SKIP_BUILD" != 1 ]; then
    echo "building gatewayd and gatewayctl (release)" >&2
    (cd "$ROOT" && cargo build --quiet --release --bins)
fi
GATEWAYD=$TARGET_DIR/release/gatewayd
CTL=$TARGET_DIR/release/gatewayctl
[ -x "$GATEWAYD" ] && [ -x "$CTL" ] || { echo "no release binaries in $TARGET_DIR" >&2; exit 2; }
# The open-loop generator: `gatewayctl loadtest` when it exists, else the loadtest example.
if "$CTL" loadtest --help >/dev/null 2>&1; then
    LOADTEST=("$CTL" loadtest)
    GENERATOR="gatewayctl loadtest"
else
    if [ "$SKIP_BUILD" != 1 ]; then
        echo "building the loadtest generator (release)" >&2
        (cd "$ROOT" && cargo build --quiet --release -p loadtest --example loadtest)
    fi
    LOADTEST=("$TARGET_DIR/release/examples/loadtest")
    GENERATOR="loadtest example (crates/loadtest)"
fi

WORK=$(mktemp -d /tmp/dataplane-bench.XXXXXX)
PIDS=()
stop_nginx() {
    local pidfile=$1
    if [ -f "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
        for _ in $(seq 50); do [ -f "$pidfile" ] || break; sleep 0.1; done
    fi
}
stop_gatewayds() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() {
    stop_gatewayds
    stop_nginx "$WORK/backend/nginx.pid"
    stop_nginx "$WORK/proxy/nginx.pid"
    rm -rf "$WORK"
}
trap cleanup EXIT

# N distinct free ports on 127.0.0.1.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

wait_port() {
    local port=$1 what=$2
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "$what did not start listening on $port" >&2
    return 1
}

nginx_common() {
    local dir=$1
    cat <<EOF
pid $dir/nginx.pid;
error_log $dir/error.log warn;
EOF
}
nginx_temp_paths() {
    local dir=$1
    cat <<EOF
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
EOF
}

read -r B_LOG B_FAST P_PROXY <<<"$(free_ports 3)"

# --- the backend: nginx, one worker, a static 200 on two ports: one logs every request's arrival
# time (to count admissions per 100 ms), the other does not (for the overhead comparison).
mkdir -p "$WORK/backend/tmp" "$WORK/proxy/tmp"
{
    echo "worker_processes 1;"
    nginx_common "$WORK/backend"
    cat <<EOF
events { worker_connections 16384; }
http {
$(nginx_temp_paths "$WORK/backend")
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    log_format arrivals '\$msec';
    server {
        listen 127.0.0.1:$B_LOG;
        access_log $WORK/backend/arrivals.log arrivals buffer=256k flush=1s;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
    server {
        listen 127.0.0.1:$B_FAST;
        access_log off;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
} >"$WORK/backend/nginx.conf"
"$NGINX" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -e "$WORK/backend/error.log"
wait_port "$B_LOG" "backend nginx"

echo "== context"
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "gatewayd: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') (+ working tree), release build; generator: $GENERATOR"
echo "nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"

# --- a 3-node cluster ----------------------------------------------------------------------
declare -A ADMIN PEER HTTP OPS
start_node() {
    local id=$1 peers=$2
    shift 2
    mkdir -p "$WORK/node-$id"
    # In a session of its own, as nginx daemonised is, and as a service runs: with the kernel's
    # autogroup scheduling, a process started from this script would share one CPU share with
    # wrk, the load generator, and the comparison would not be even.
    RUST_LOG=warn setsid "$GATEWAYD" --node-id "$id" --data-dir "$WORK/node-$id/data" \
        --listen-admin "127.0.0.1:${ADMIN[$id]}" --listen-peer "127.0.0.1:${PEER[$id]}" \
        --listen-http "127.0.0.1:${HTTP[$id]}" --listen-ops "127.0.0.1:${OPS[$id]}" \
        --peers "$peers" "$@" >"$WORK/node-$id/log" 2>&1 &
    PIDS+=($!)
}
ctl() {
    local id=$1
    shift
    "$CTL" --endpoint "http://127.0.0.1:${ADMIN[$id]}" "$@"
}
wait_leader() {
    local n=$1 id
    for _ in $(seq 300); do
        local all=1
        for id in $(seq "$n"); do
            if ! ctl "$id" cluster status -o json 2>/dev/null |
                python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s.get("leader_id") else 1)' 2>/dev/null; then
                all=0
                break
            fi
        done
        [ "$all" = 1 ] && return 0
        sleep 0.1
    done
    echo "no leader" >&2
    return 1
}
wait_routable() {
    local url=$1 code
    for _ in $(seq 300); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)
        [ "$code" = 200 ] && return 0
        sleep 0.05
    done
    echo "$url never answered 200 (last $code)" >&2
    return 1
}

if [ "$ONLY" != overhead ]; then
peers=""
for id in 1 2 3; do
    read -r ADMIN[$id] PEER[$id] HTTP[$id] OPS[$id] <<<"$(free_ports 4)"
    peers+="${peers:+,}$id=127.0.0.1:${PEER[$id]}"
done
for id in 1 2 3; do start_node "$id" "$peers"; done
wait_leader 3
ctl 1 instance create --name bench --spec api.s1.small --region cn-hongkong >/dev/null
ctl 2 group create --name bench --instance bench >/dev/null
ctl 3 api create --group bench --name ping --method GET --path /ping \
    --backend "http://127.0.0.1:$B_LOG" --timeout 5s >/dev/null
ctl 1 api deploy --group bench --name ping >/dev/null
for id in 1 2 3; do
    wait_routable "http://127.0.0.1:${HTTP[$id]}/ping"
    wait_routable "http://127.0.0.1:${OPS[$id]}/readyz"
done
url() { echo "http://127.0.0.1:${HTTP[$1]}/ping"; }

# One constant-rate run of RUN_SECS at OFFERED req/s; $1 = name, $2 = "even" or "skewed",
# $3 = seconds after the start to call modify-spec (empty: no change).
run_load() {
    local name=$1 shape=$2 change_at=${3:-}
    local targets=()
    if [ "$shape" = even ]; then
        targets=(--target "$(url 1)@1" --target "$(url 2)@1" --target "$(url 3)@1")
    else
        targets=(--target "$(url 1)@80" --target "$(url 2)@10" --target "$(url 3)@10")
    fi
    # Let the previous run's demand reports age out, and mark where this run's arrivals start.
    sleep 1.5
    date +%s.%N >"$WORK/$name.start"
    timeout $((RUN_SECS + 60)) "${LOADTEST[@]}" --rate "$OFFERED" --duration "${RUN_SECS}s" \
        --connections "$CONNECTIONS" --timeout 2s --quiet --json "$WORK/$name.json" \
        "${targets[@]}" >"$WORK/$name.out" 2>&1 &
    local lt=$!
    if [ -n "$change_at" ]; then
        sleep "$change_at"
        date +%s.%N >"$WORK/$name.called"
        ctl 2 instance modify-spec --name bench --spec api.s1.medium >/dev/null
        date +%s.%N >"$WORK/$name.returned"
    fi
    wait "$lt" || true
    date +%s.%N >"$WORK/$name.end"
    [ -s "$WORK/$name.json" ] || { echo "the generator wrote no report:" >&2; cat "$WORK/$name.out" >&2; exit 1; }
}

echo
echo "== a. accuracy: api.s1.small ($SMALL req/s cluster-wide), $OFFERED req/s offered (2x), ${RUN_SECS}s runs, $CONNECTIONS connections"
run_load even even
run_load skewed skewed
run_load even-change even "$CHANGE_AT"
ctl 1 instance modify-spec --name bench --spec api.s1.small >/dev/null
run_load skewed-change skewed "$CHANGE_AT"
# Flush the backend's access log.
kill -USR1 "$(cat "$WORK/backend/nginx.pid")"
sleep 1.5

python3 - "$WORK" "$SMALL" "$MEDIUM" "$OFFERED" "$RUN_SECS" <<'PY'
import json, sys, bisect
work, small, medium, offered = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
secs = int(sys.argv[5])
arrivals = sorted(float(l) for l in open(f"{work}/backend/arrivals.log") if l.strip())

def t(name, what):
    return float(open(f"{work}/{name}.{what}").read())

def count(a, b):
    return bisect.bisect_left(arrivals, b) - bisect.bisect_left(arrivals, a)

def gen(name):
    r = json.load(open(f"{work}/{name}.json"))
    p = r["phases"][0]
    return r, p

def describe_generator(r, p):
    g = r["generator"]
    o = p["outcomes"]
    return (f'generator: sent {o["sent"]}, achieved {p["achieved_rps"]:.0f} req/s '
            f'(p99 send lag {g["p99_lag_ms"]:.2f} ms, on schedule: {g["on_schedule"]}); '
            f'2xx {o["ok_2xx"]}, 429 {o["throttled_429"]}, other {o["sent"] - o["ok_2xx"] - o["throttled_429"]}')

def per_node(r):
    return ", ".join(f'node {i + 1}: {t["outcomes"]["ok_2xx"]}/{t["outcomes"]["sent"]}'
                     for i, t in enumerate(r["targets"]))

for name, label in [("even", "even 1/1/1"), ("skewed", "skewed 80/10/10")]:
    r, p = gen(name)
    ws = [w["ok_2xx"] for w in r["windows"]][:secs]
    print(f"\n-- {label}")
    print("  " + describe_generator(r, p))
    print(f"  admitted per node (2xx/sent): {per_node(r)}")
    print(f"  admitted (2xx) per 1 s window: {ws}")
    judged = ws[1:]
    errs = [abs(w - small) / small * 100 for w in judged]
    mean = sum(judged) / len(judged)
    print(f"  windows 2..{len(ws)}: mean {mean:.0f}/s ({(mean - small) / small * 100:+.2f}%), "
          f"min {min(judged)}, max {max(judged)}, worst error {max(errs):.2f}% "
          f"-> {'within' if max(errs) <= 2 else 'OUTSIDE'} 2% of {small:.0f}")
    # Cross-check at the backend: arrivals in whole seconds after the run's start.
    s = t(name, "start")
    backend = [count(s + i, s + i + 1) for i in range(len(ws))]
    print(f"  backend arrivals per 1 s from the run's start (incl. connection warm-up): {backend}")

for name, label in [("even-change", "even 1/1/1"), ("skewed-change", "skewed 80/10/10")]:
    r, p = gen(name)
    ws = [w["ok_2xx"] for w in r["windows"]][:secs]
    called, returned = t(name, "called"), t(name, "returned")
    end = t(name, "end")
    print(f"\n-- spec change api.s1.small -> api.s1.medium mid-run, {label}")
    print("  " + describe_generator(r, p))
    print(f"  admitted (2xx) per 1 s window: {ws}")
    print(f"  gatewayctl instance modify-spec: {(returned - called) * 1000:.0f} ms from start to exit "
          f"(process start, commit, apply on the node it asked)")
    # 100 ms windows sliding in 10 ms steps from the call on.
    reached = None
    k = 0
    while called + k * 0.01 + 0.1 <= end - 0.2:
        if count(called + k * 0.01, called + k * 0.01 + 0.1) >= 0.98 * medium * 0.1:
            reached = k * 0.01
            break
        k += 1
    bins = [count(called + i * 0.1, called + (i + 1) * 0.1) * 10 for i in range(-5, 15)]
    print(f"  backend admitted rate (req/s) in 100 ms bins from 0.5 s before the call: {bins}")
    print(f"  admitted in the 2 s before the call: {count(called - 2.0, called) / 2:.0f}/s")
    if reached is None:
        print(f"  the admitted rate did not reach 98% of {medium:.0f}/s before the run ended")
    else:
        after = count(called + reached, called + reached + 1.0)
        print(f"  time until the admitted rate reached {medium:.0f}/s (>= 98% over 100 ms): "
              f"{reached * 1000:.0f} ms after the call started; the 1 s from then admitted {after} "
              f"({(after - medium) / medium * 100:+.2f}%)")
PY
fi # ONLY != overhead

# --- b. overhead ---------------------------------------------------------------------------
stop_gatewayds
# One single-node gatewayd (binary: $GATEWAYD) with the bench API deployed, limiter on far
# above the offered load; its URL is http://127.0.0.1:${HTTP[id]}/bench.
overhead_node() {
    local id=$1
    shift
    read -r ADMIN[$id] PEER[$id] HTTP[$id] OPS[$id] <<<"$(free_ports 4)"
    start_node "$id" "$id=127.0.0.1:${PEER[$id]}" --shared-ceiling-rps 1000000 "$@"
    local led=0
    for _ in $(seq 300); do
        if ctl "$id" cluster status -o json 2>/dev/null |
            python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s.get("leader_id") else 1)' 2>/dev/null; then
            led=1
            break
        fi
        sleep 0.1
    done
    [ "$led" = 1 ] || { echo "node $id elected no leader" >&2; return 1; }
    ctl "$id" group create --name ov --instance shared >/dev/null
    ctl "$id" api create --group ov --name bench --method GET --path /bench \
        --backend "http://127.0.0.1:$B_FAST" --timeout 5s >/dev/null
    ctl "$id" api deploy --group ov --name bench >/dev/null
    wait_routable "http://127.0.0.1:${HTTP[$id]}/bench"
}
GW_ARGS=()
GW_NOTE=
if [ "$ACCESS_LOG" = 1 ]; then
    # The same binary twice: with an access log file (rotated at 64 MiB, 2 kept, so that a long
    # run stays bounded on disk), and without.
    GW_ARGS=(--access-log "$WORK/access.log" --access-log-max-bytes 67108864 --access-log-keep 2)
    BASELINE_GATEWAYD=$GATEWAYD
fi
if [ "$THROTTLE_POLICY" = 1 ]; then
    BASELINE_GATEWAYD=$GATEWAYD
fi
overhead_node 9 --http-threads 2 "${GW_ARGS[@]}"
GW_URL="http://127.0.0.1:${HTTP[9]}/bench"
if [ "$THROTTLE_POLICY" = 1 ]; then
    # An API limit and a user limit far above what wrk offers: every call takes a slot of each
    # (the user limit applies to signed calls only, so wrk's unsigned calls take the API's).
    ctl 9 throttle create --name bench --unit "$UNIT" --api-limit 1000000000 \
        --user-limit 1000000000 >/dev/null
    ctl 9 throttle bind --name bench --group ov --api bench >/dev/null
    bound=0
    for _ in $(seq 100); do
        if curl -s "http://127.0.0.1:${OPS[9]}/metrics" | grep -q '^gateway_throttle_limit{policy="bench"'; then
            bound=1
            break
        fi
        sleep 0.1
    done
    [ "$bound" = 1 ] || { echo "the policy is not bound on node 9" >&2; exit 1; }
    GW_NOTE="a throttling policy bound (per $UNIT, API and user limits 1e9)"
fi
GW_PID=${PIDS[0]}
CONTENDERS="gatewayd nginx"
if [ -n "$BASELINE_GATEWAYD" ]; then
    GATEWAYD=$BASELINE_GATEWAYD overhead_node 8 --http-threads 2
    BASE_URL="http://127.0.0.1:${HTTP[8]}/bench"
    BASE_PID=${PIDS[1]}
    CONTENDERS="gatewayd baseline nginx"
fi

{
    echo "worker_processes 2;"
    nginx_common "$WORK/proxy"
    cat <<EOF
events { worker_connections 16384; }
http {
$(nginx_temp_paths "$WORK/proxy")
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    upstream backend {
        server 127.0.0.1:$B_FAST;
        keepalive 256;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$P_PROXY;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto http;
        }
    }
}
EOF
} >"$WORK/proxy/nginx.conf"
"$NGINX" -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" -e "$WORK/proxy/error.log"
wait_port "$P_PROXY" "proxy nginx"
NGINX_URL="http://127.0.0.1:$P_PROXY/bench"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$NGINX_URL")" = 200 ]

echo
echo "== b. overhead: wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d${WRK_SECS}s --latency, $ROUNDS alternating rounds"
echo "   gatewayd: 1 node, limiter on (shared instance, ceiling 1,000,000 req/s), --http-threads 2 ${GW_ARGS[*]} ${GW_NOTE:-}"
[ -n "$BASELINE_GATEWAYD" ] && echo "   baseline: $BASELINE_GATEWAYD, --http-threads 2"
echo "   nginx:    reverse proxy, worker_processes 2, upstream keepalive"
echo "   backend:  nginx, 1 worker, static 200 (shared by both)"
# Warm both up (connections to the backend, caches).
wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d2s "$GW_URL" >/dev/null 2>&1
wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d2s "$NGINX_URL" >/dev/null 2>&1
[ -n "$BASELINE_GATEWAYD" ] && wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d2s "$BASE_URL" >/dev/null 2>&1
NGINX_WORKERS=$(pgrep -P "$(cat "$WORK/proxy/nginx.pid")" | tr '\n' ' ')
# CPU time (user, system) of processes, in clock ticks.
cpu_ticks() {
    local p u=0 s=0
    for p in "$@"; do
        read -r pu ps < <(awk '{print $14, $15}' "/proc/$p/stat")
        u=$((u + pu)); s=$((s + ps))
    done
    echo "$u $s"
}
for round in $(seq "$ROUNDS"); do
    for who in $CONTENDERS; do
        case $who in
            gatewayd) u=$GW_URL; pids=$GW_PID ;;
            baseline) u=$BASE_URL; pids=$BASE_PID ;;
            nginx) u=$NGINX_URL; pids=$NGINX_WORKERS ;;
        esac
        before=$(cpu_ticks $pids)
        wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"${WRK_SECS}s" --latency "$u" >"$WORK/wrk-$who-$round.txt" 2>&1
        echo "$before $(cpu_ticks $pids) $(getconf CLK_TCK)" >"$WORK/cpu-$who-$round.txt"
    done
done
# The same open-loop rate through each, alternating: latency at equal load.
for round in $(seq "$ROUNDS"); do
    for who in gatewayd nginx; do
        u=$GW_URL
        [ "$who" = nginx ] && u=$NGINX_URL
        timeout $((WRK_SECS + 60)) "${LOADTEST[@]}" --rate "$OVERHEAD_RATE" --duration "${WRK_SECS}s" \
            --connections "$WRK_CONNECTIONS" --timeout 2s --quiet --json "$WORK/rate-$who-$round.json" \
            --target "$u" >/dev/null 2>&1 || true
    done
done
THROTTLED=$(curl -s "http://127.0.0.1:${OPS[9]}/metrics" | awk '$1 == "gateway_throttled_total{instance=\"shared\"}" {print $2}')
if [ "$ACCESS_LOG" = 1 ]; then
    echo "access log: $(cat "$WORK"/access.log* | wc -l) lines kept ($(du -ch "$WORK"/access.log* | tail -1 | cut -f1)), dropped: $(curl -s "http://127.0.0.1:${OPS[9]}/metrics" | awk '$1 == "gateway_access_log_dropped_total" {print $2}')"
fi

python3 - "$WORK" "$ROUNDS" "${THROTTLED:-?}" "$OVERHEAD_RATE" "$CONTENDERS" <<'PY'
import json, re, sys, statistics
work, rounds, throttled, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
who_all = sys.argv[5].split()

def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v)
    x, unit = float(m.group(1)), m.group(2)
    return x / 1000 if unit == "us" else x * 1000 if unit == "s" else x

def parse(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errs = re.search(r"Socket errors: (.*)", text)
    total = int(re.search(r"(\d+) requests in", text).group(1))
    u0, s0, u1, s1, hz = (int(x) for x in open(path.replace("/wrk-", "/cpu-")).read().split())
    cpu = ((u1 - u0) * 1e6 / hz / total, (s1 - s0) * 1e6 / hz / total)
    return rps, p50, p99, cpu, int(bad.group(1)) if bad else 0, errs.group(1) if errs else ""

res = {w: [parse(f"{work}/wrk-{w}-{r}.txt") for r in range(1, rounds + 1)] for w in who_all}
print(f"\n  {'round':<6}{'who':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req (user+sys)':>24}  non-2xx / socket errors")
for r in range(rounds):
    for w in who_all:
        rps, p50, p99, (cu, cs), bad, errs = res[w][r]
        cpu = f"{cu + cs:.1f} ({cu:.1f}+{cs:.1f})"
        print(f"  {r + 1:<6}{w:<10}{rps:>10.0f}{p50:>9.3f}{p99:>9.3f}{cpu:>24}  {bad} {errs}")
med = {w: [statistics.median(x[i] for x in res[w]) for i in range(3)]
          + [statistics.median(x[3][0] + x[3][1] for x in res[w])] for w in res}
print()
for w in who_all:
    print(f"  median {w:<9} {med[w][0]:>8.0f} req/s, p50 {med[w][1]:.3f} ms, p99 {med[w][2]:.3f} ms, "
          f"CPU {med[w][3]:.1f} us/req")
if "baseline" in med:
    b = med["baseline"]
    g = med["gatewayd"]
    print(f"  gatewayd / baseline: throughput x{g[0] / b[0]:.2f}, p50 x{g[1] / b[1]:.2f}, "
          f"p99 x{g[2] / b[2]:.2f}, CPU per request x{g[3] / b[3]:.2f}")
g, n = med["gatewayd"], med["nginx"]
print(f"  gatewayd / nginx: throughput x{g[0] / n[0]:.2f}, p50 x{g[1] / n[1]:.2f}, p99 x{g[2] / n[2]:.2f}"
      f"  (target: throughput >= x1.00, p99 <= x1.00)")
# Paired: each gatewayd round against the nginx round right after it. The machine's speed
# drifts by more than the difference measured; a pair shares most of the drift.
pairs = list(zip(res["gatewayd"], res["nginx"]))
for name, i, better in (("throughput", 0, lambda r: r >= 1), ("p99", 2, lambda r: r <= 1)):
    ratios = [gw[i] / ng[i] for gw, ng in pairs]
    print(f"  paired {name:<10} x{statistics.median(ratios):.2f} (median of "
          f"{' '.join(f'{r:.2f}' for r in ratios)}; gatewayd ahead or level in "
          f"{sum(map(better, ratios))} of {len(ratios)})")
cpu = [(gw[3][0] + gw[3][1]) / (ng[3][0] + ng[3][1]) for gw, ng in pairs]
print(f"  paired CPU/req     x{statistics.median(cpu):.2f} (gatewayd lower in {sum(r < 1 for r in cpu)} of {len(cpu)})")

print(f"\n  open loop at {rate} req/s (latency from each request's scheduled send time):")
print(f"  {'round':<6}{'who':<10}{'achieved':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}  2xx/sent")
lat = {"gatewayd": [], "nginx": []}
for r in range(1, rounds + 1):
    for w in ("gatewayd", "nginx"):
        try:
            rep = json.load(open(f"{work}/rate-{w}-{r}.json"))
        except (OSError, ValueError):
            print(f"  {r:<6}{w:<10} (no report)")
            continue
        p = rep["phases"][0]
        l, o = p["latency"], p["outcomes"]
        lat[w].append((l["p50_ms"], l["p99_ms"]))
        print(f"  {r:<6}{w:<10}{p['achieved_rps']:>10.0f}{l['p50_ms']:>9.3f}{l['p99_ms']:>9.3f}{l['p99_9_ms']:>10.3f}"
              f"  {o['ok_2xx']}/{o['sent']} (generator p99 lag {rep['generator']['p99_lag_ms']:.2f} ms)")
if lat["gatewayd"] and lat["nginx"]:
    g50 = statistics.median(x[0] for x in lat["gatewayd"]); g99 = statistics.median(x[1] for x in lat["gatewayd"])
    n50 = statistics.median(x[0] for x in lat["nginx"]); n99 = statistics.median(x[1] for x in lat["nginx"])
    print(f"  medians: gatewayd p50 {g50:.3f} ms, p99 {g99:.3f} ms; nginx p50 {n50:.3f} ms, p99 {n99:.3f} ms;"
          f" gatewayd / nginx: p50 x{g50 / n50:.2f}, p99 x{g99 / n99:.2f}")
print(f"\n  requests throttled by gatewayd's limiter during the runs: {throttled}")
PY
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
