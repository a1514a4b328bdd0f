#!/usr/bin/env bash
# stop.sh stops the development Redis that run.sh started, by the PID in its
# pidfile, and only if that process is a redis-server.
set -euo pipefail

cd "$(dirname "$0")/../.."
pidfile=var/redis/redis.pid

# A running "make run" uses this Redis: its relay would lose it.
if [ -f var/dev/run.pid ]; then
	run_pid=$(cat var/dev/run.pid)
	if [[ "$run_pid" =~ ^[0-9]+$ ]] && kill -0 "$run_pid" 2>/dev/null &&
		run_args=$(tr '\0' ' ' <"/proc/$run_pid/cmdline" 2>/dev/null || ps -o args= -p "$run_pid") &&
		[[ "$run_args" == *run.sh* ]]; then
		echo "stop: make run (pid $run_pid) is using the development Redis; stop it first (Ctrl-C in its terminal, or kill $run_pid), then make stop" >&2
		exit 1
	fi
fi

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
