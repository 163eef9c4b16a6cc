#!/usr/bin/env bash
# Load generator ceiling.
#
# Starts nginx on 127.0.0.1 (a free port, its own temp prefix and config, one worker process)
# serving a static 200, then finds the highest rate the loadtest crate's open-loop generator
# holds on schedule against it, and measures wrk's maximum (closed-loop) throughput against the
# same nginx in the same run, as the baseline.
#
# "On schedule" at rate R: achieved send rate >= 99% of R, p99 send lag <= LAG_MS, every
# request answered 200. Rates are stepped up geometrically until a step misses, then the gap
# is bisected. Other processes share the machine, so a step that misses is tried again
# (TRIES times in all) before it counts as missed.
#
# Needs nginx, wrk and python3 (installs nginx and wrk with apt-get when missing and root).
# Only 127.0.0.1 is loaded; every run is bounded in time.
#
# Usage: benches/loadtest_ceiling.sh            (from anywhere; builds the release example)
# Knobs: STEP_SECS=5 CONNECTIONS=64 START_RATE=5000 MAX_RATE=200000 LAG_MS=10 BISECT=3
#        TRIES=2 WRK_THREADS=2 WRK_SECS=10 NGINX_WORKERS=1
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STEP_SECS=${STEP_SECS:-5}
CONNECTIONS=${CONNECTIONS:-64}
START_RATE=${START_RATE:-5000}
MAX_RATE=${MAX_RATE:-200000}
LAG_MS=${LAG_MS:-10}
BISECT=${BISECT:-3}
TRIES=${TRIES:-2}
WRK_THREADS=${WRK_THREADS:-2}
WRK_SECS=${WRK_SECS:-10}
NGINX_WORKERS=${NGINX_WORKERS:-1}

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
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 2; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

echo "building the generator (release)" >&2
(cd "$ROOT" && cargo build --quiet --release -p loadtest --example loadtest)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/examples/loadtest
[ -x "$BIN" ] || { echo "no binary at $BIN" >&2; exit 2; }

WORK=$(mktemp -d /tmp/loadtest-ceiling.XXXXXX)
cleanup() {
    if [ -f "$WORK/nginx.pid" ]; then
        kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
        for _ in $(seq 50); do [ -f "$WORK/nginx.pid" ] || break; sleep 0.1; done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$WORK/logs" "$WORK/tmp"
cat >"$WORK/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
pid $WORK/nginx.pid;
error_log $WORK/logs/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $WORK/tmp/body;
    proxy_temp_path $WORK/tmp/proxy;
    fastcgi_temp_path $WORK/tmp/fastcgi;
    uwsgi_temp_path $WORK/tmp/uwsgi;
    scgi_temp_path $WORK/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:$PORT;
        location / {
            default_type text/plain;
            return 200 "ok\n";
        }
    }
}
EOF
"$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/logs/error.log"
URL="http://127.0.0.1:$PORT/"
for i in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    [ "$i" = 100 ] && { echo "nginx did not start" >&2; cat "$WORK/logs/error.log" >&2; exit 1; }
    sleep 0.1
done

echo "nginx: $("$NGINX" -v 2>&1 | sed 's/.*: //'), $NGINX_WORKERS worker(s), $URL" >&2
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# One generator step: prints "achieved p99_lag_ms late_10ms ok sent p99_ms ok?" for rate $1.
step() {
    local rate=$1
    rm -f "$WORK/step.json"
    timeout $((STEP_SECS + 30)) "$BIN" --target "$URL" --rate "$rate" --duration "${STEP_SECS}s" \
        --connections "$CONNECTIONS" --quiet --json "$WORK/step.json" >"$WORK/step.txt" 2>&1 || true
    python3 - "$WORK/step.json" "$rate" "$LAG_MS" <<'PY'
import json, sys
rate, lag_ms = float(sys.argv[2]), float(sys.argv[3])
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print("0 0 0 0 1 0 no")
    sys.exit()
p = r["phases"][0]
o = p["outcomes"]
ok = (p["achieved_rps"] >= 0.99 * rate and r["generator"]["p99_lag_ms"] <= lag_ms
      and o["ok_2xx"] == p["scheduled"])
print(f'{p["achieved_rps"]:.0f} {r["generator"]["p99_lag_ms"]:.2f} {p["lag"]["late_10ms"]} '
      f'{o["ok_2xx"]} {p["scheduled"]} {p["latency"]["p99_ms"]:.2f} {"yes" if ok else "no"}')
PY
}

printf '%-10s %10s %10s %10s %10s %10s  %s\n' "rate/s" "achieved/s" "p99lag ms" "late>10ms" "2xx/sched" "p99 ms" "on schedule" >&2
best=0
worst=0
probe() {
    local rate=$1 out try
    for try in $(seq "$TRIES"); do
        out=$(step "$rate")
        read -r ach lag late ok sched p99 good <<<"$out"
        printf '%-10s %10s %10s %10s %10s %10s  %s\n' "$rate" "$ach" "$lag" "$late" "$((ok * 100 / sched))%" "$p99" "$good" >&2
        [ "$good" = yes ] && return 0
    done
    return 1
}
rate=$START_RATE
while [ "$rate" -le "$MAX_RATE" ]; do
    if probe "$rate"; then
        best=$rate
        rate=$((rate * 3 / 2))
    else
        worst=$rate
        break
    fi
done
if [ "$worst" -gt 0 ] && [ "$best" -gt 0 ]; then
    for _ in $(seq "$BISECT"); do
        mid=$(((best + worst) / 2))
        if probe "$mid"; then best=$mid; else worst=$mid; fi
    done
fi

echo "wrk: $WRK_THREADS threads, $CONNECTIONS connections, ${WRK_SECS}s" >&2
wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${WRK_SECS}s" --latency "$URL" >"$WORK/wrk.txt" 2>&1
wrk_rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$WORK/wrk.txt")
wrk_p99=$(awk '$1 == "99%" {print $2}' "$WORK/wrk.txt")

echo
echo "generator ceiling (on schedule, ${STEP_SECS}s steps, $CONNECTIONS connections): $best req/s"
if [ "$worst" -gt 0 ]; then
    echo "first rate missed: $worst req/s"
else
    echo "no step missed up to MAX_RATE=$MAX_RATE"
fi
echo "wrk maximum throughput ($WRK_THREADS threads, $CONNECTIONS connections, ${WRK_SECS}s): $wrk_rps req/s (p99 $wrk_p99)"
echo "nginx: $NGINX_WORKERS worker(s); machine: $(nproc) cores, load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
