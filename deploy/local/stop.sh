#!/usr/bin/env bash
# stop.sh stops the development Redis that run.sh started, by the PID in its
# pidfile, and only if that process is a redis-server.
set -euo pipefail

cd "$(dirname "$0")/../.."
pidfile=var/redis/redis.pid

if [ ! -f "$pidfile" ]; then
	echo "stop: no development Redis is running (no $pidfile)"
	exit 0
fi
pid=$(cat "$pidfile")
if ! [[ "$pid" =~ ^[0-9]+$ ]] || ! kill -0 "$pid" 2>/dev/null; then
	echo "stop: the development Redis is not running; removing the stale $pidfile"
	rm -f "$pidfile"
	exit 0
fi
case "$(cat "/proc/$pid/comm" 2>/dev/null || ps -o comm= -p "$pid")" in
redis-server*) ;;
*)
	echo "stop: pid $pid in $pidfile is not a redis-server; not stopping it" >&2
	exit 1
	;;
esac
kill -TERM "$pid"
for _ in $(seq 100); do
	kill -0 "$pid" 2>/dev/null || {
		echo "stop: stopped the development Redis (pid $pid)"
		exit 0
	}
	sleep 0.1
done
echo "stop: the development Redis (pid $pid) did not exit within 10 s" >&2
exit 1
