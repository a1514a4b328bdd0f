#!/usr/bin/env bash
# SMTP ingress benchmark: a private redis-server (AOF on, appendfsync
# everysec) and the relay on loopback, with delivery off, loaded by hfload
# (20 authenticated sessions, 2 KB messages). Prints throughput, accept
# latency percentiles and the relay's peak RSS. Runs ROUNDS times and
# reports each round and the median. Everything it starts it stops by PID.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-30000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-2048}

top=$(cd "$(dirname "$0")/../.." && pwd)
bin=$top/bin
for tool in redis-server redis-cli python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing: run \"apt-get install -y redis-server redis-tools python3 time\" and retry" >&2; exit 1; }
done
[ -x "$bin/holdfast" ] && [ -x "$bin/hfload" ] || { echo "bench: build first: make build" >&2; exit 1; }

work=$(mktemp -d)
redis_pid="" relay_pid="" time_pid=""
cleanup() {
  [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null && wait "$time_pid" 2>/dev/null || true
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: nothing listens on 127.0.0.1:$1" >&2; return 1
}

redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$work" --appendonly yes \
  --appendfsync everysec --save '' --maxmemory-policy noeviction --daemonize no \
  --logfile "$work/redis.log" &
redis_pid=$!
wait_port "$redis_port"

smtp_port=$(free_port)
http_port=$(free_port)
hash=$("$bin/holdfast" creds hash <<<"bench-password")
cat >"$work/holdfast.yaml" <<YAML
hostname: bench.localhost
redis:
  addrs: ["127.0.0.1:$redis_port"]
smtp:
  listeners:
    - addr: "127.0.0.1:$smtp_port"
      insecure: true
http:
  addr: "127.0.0.1:$http_port"
delivery:
  sender: "off"
log:
  level: warn
apps:
  - name: bench
    password_hash: "$hash"
    senders: ["@example.com"]
YAML

results=()
for round in $(seq 1 "$ROUNDS"); do
  /usr/bin/time -v -o "$work/time.txt" "$bin/holdfast" serve --config "$work/holdfast.yaml" >"$work/relay.log" 2>&1 &
  time_pid=$!
  wait_port "$smtp_port"
  # GNU time does not pass signals on: stop the relay itself, its child.
  relay_pid=$(ps -o pid= --ppid "$time_pid" | tr -d ' ')
  out=$("$bin/hfload" -smtp "127.0.0.1:$smtp_port" -user bench -pass bench-password \
    -from load@example.com -sessions "$SESSIONS" -messages "$MESSAGES" -size "$SIZE" -json)
  kill -TERM "$relay_pid"; wait "$time_pid" || true; relay_pid=""
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
  line=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%.0f %.2f %.2f %d %d" % (r["messages_per_second"], r["p50_ms"], r["p99_ms"], r["accepted"], r["failed"]))' "$out")
  read -r rate p50 p99 accepted failed <<<"$line"
  printf 'round %d: %s msg/s, p50 %s ms, p99 %s ms, peak RSS %d MiB (%s accepted, %s failed)\n' \
    "$round" "$rate" "$p50" "$p99" $((rss / 1024)) "$accepted" "$failed"
  results+=("$rate $p50 $p99 $rss")
  "$bin/holdfast" queue stats --config "$work/holdfast.yaml" >/dev/null 2>&1 || true
  redis-cli -p "$redis_port" FLUSHALL >/dev/null
done

printf '%s\n' "${results[@]}" | python3 -c '
import sys, statistics as st
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
med = [st.median(c) for c in zip(*rows)]
print("median of %d rounds: %.0f messages/s, accept latency p50 %.2f ms, p99 %.2f ms, peak RSS %.0f MiB" % (len(rows), med[0], med[1], med[2], med[3] / 1024))
'
