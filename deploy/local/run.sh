#!/usr/bin/env bash
# run.sh runs Holdfast for development: a private Redis in var/redis on
# 127.0.0.1:6390, the Exchange Online simulator in place of Microsoft
# (deploy/local/sim.yaml), a self-signed certificate in var/dev, and the
# relay, built from source into bin/holdfast, in the foreground with
# deploy/local/holdfast.dev.yaml. Ctrl-C, or closing the terminal, stops
# the relay, then the simulator (so deliveries in flight finish); the
# Redis keeps running for the next run ("make stop" stops it).
set -euo pipefail

cd "$(dirname "$0")/../.."
root=$PWD
redis_dir=$root/var/redis
pidfile=$redis_dir/redis.pid
port=6390

# redis_ping answers whether a Redis on 127.0.0.1:$port replies to PING.
redis_ping() {
	local reply
	reply=$(
		exec 2>/dev/null
		exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
		printf 'PING\r\n' >&3
		read -r -t 2 line <&3 && printf '%s' "${line%$'\r'}"
	) || return 1
	[ "$reply" = "+PONG" ]
}

# our_redis prints the PID in the pidfile if that process is a running
# redis-server.
our_redis() {
	local pid
	[ -f "$pidfile" ] || return 1
	pid=$(cat "$pidfile")
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	case "$(cat "/proc/$pid/comm" 2>/dev/null || ps -o comm= -p "$pid")" in
	redis-server*) echo "$pid" ;;
	*) return 1 ;;
	esac
}

# running_run prints the PID in var/dev/run.pid if that process is a
# running run.sh: another "make run".
running_run() {
	local pid args
	[ -f var/dev/run.pid ] || return 1
	pid=$(cat var/dev/run.pid)
	[[ "$pid" =~ ^[0-9]+$ ]] && [ "$pid" != "$$" ] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || ps -o args= -p "$pid") || return 1
	[[ "$args" == *run.sh* ]] || return 1
	echo "$pid"
}

# port_taken answers whether something accepts connections on
# 127.0.0.1:$1.
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

mkdir -p "$redis_dir" var/dev var/outbox

# One "make run" at a time: a second would replace the simulator's CA
# under the first one's relay, then fail on the ports the first holds.
if other=$(running_run); then
	echo "run: make run is already running (pid $other); use it, or stop it first (Ctrl-C in its terminal, or kill $other)" >&2
	exit 1
fi
for p in 2525 2587 8025 8026 5587 8443 8099; do
	if port_taken "$p"; then
		echo "run: 127.0.0.1:$p is in use (the relay or the simulator needs it); stop what listens there (ss -ltnp 'sport = :$p' names it) and retry" >&2
		exit 1
	fi
done
echo $$ >var/dev/run.pid
trap 'rm -f var/dev/run.pid' EXIT

if pid=$(our_redis); then
	echo "run: reusing the development Redis on 127.0.0.1:$port (pid $pid)"
else
	rm -f "$pidfile"
	if redis_ping; then
		echo "run: something else answers on 127.0.0.1:$port, but not the Redis of $pidfile; stop it and retry" >&2
		exit 1
	fi
	redis-server \
		--bind 127.0.0.1 --port "$port" --protected-mode yes \
		--dir "$redis_dir" \
		--appendonly yes --appendfsync everysec --save "" \
		--maxmemory-policy noeviction \
		--daemonize yes --pidfile "$pidfile" --logfile "$redis_dir/redis.log"
	for _ in $(seq 50); do
		redis_ping && break
		sleep 0.1
	done
	if ! redis_ping || ! pid=$(our_redis); then
		echo "run: the development Redis did not start; see $redis_dir/redis.log" >&2
		exit 1
	fi
	echo "run: started the development Redis on 127.0.0.1:$port (pid $pid, data in var/redis)"
fi

# Build once, then run the binary itself: it gets Ctrl-C directly and its
# exit status is the relay's own ("go run" exits 1 whenever it is
# interrupted).
# -v names each package as it is compiled: the first build takes a few
# minutes, later ones seconds.
version=$(git describe --always --dirty 2>/dev/null || echo dev)
if [ -x bin/holdfast ]; then
	echo "run: building bin/holdfast and bin/o365sim…"
else
	echo "run: building bin/holdfast and bin/o365sim… (the first build compiles every dependency and takes a few minutes)"
fi
go build -v -ldflags "-X main.version=$version" -o bin/holdfast ./cmd/holdfast
go build -v -o bin/o365sim ./cmd/o365sim
echo "run: built"

bin/holdfast creds devcert --out var/dev
[ -s var/dev/dev.secret ] || echo dev-secret-value >var/dev/dev.secret
[ -s var/dev/grants.key ] || od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >var/dev/grants.key

# The simulator runs in the background for as long as the relay does. It
# reads its app's secret from var/dev/dev.secret (sim.yaml), the file the
# relay reads, so the two agree after a rotation and a restart. setsid
# keeps it out of the terminal's process group: Ctrl-C reaches the relay
# only, and the simulator is stopped (by PID) once the relay has finished
# its deliveries in flight.
rm -f var/dev/sim-ca.pem
setsid bin/o365sim --config deploy/local/sim.yaml --ca-out var/dev/sim-ca.pem 2>var/dev/o365sim.log &
sim_pid=$!
stop_sim() {
	kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null || true
	rm -f var/dev/run.pid
}
trap stop_sim EXIT
for _ in $(seq 50); do
	[ -s var/dev/sim-ca.pem ] && (exec 3<>/dev/tcp/127.0.0.1/5587) 2>/dev/null && break
	sleep 0.1
done
if ! kill -0 "$sim_pid" 2>/dev/null; then
	echo "run: the simulator did not start; see var/dev/o365sim.log" >&2
	exit 1
fi
echo "run: started the Exchange Online simulator (pid $sim_pid): SMTP 127.0.0.1:5587, Entra and Graph https://127.0.0.1:8443, admin http://127.0.0.1:8099/admin"

echo "run: starting the relay: SMTP 127.0.0.1:2525 (STARTTLS) and 127.0.0.1:2587 (no TLS), HTTP 127.0.0.1:8025, status page and /metrics http://127.0.0.1:8026/; Ctrl-C stops it"
# A trap (not an ignored signal) lets this script outlive Ctrl-C and print
# the note below, while the relay still gets SIGINT and shuts down
# gracefully. A closed terminal sends SIGHUP instead, which the relay
# takes as "re-read the credential files", and a kill of this script's
# PID sends SIGTERM to it alone: the relay runs in the background, so
# that a trap can stop it at once, as Ctrl-C does, rather than leave it
# running without a terminal or a script (Go turns SIGINT back on, which
# bash turns off for a background command). The relay is told once: a
# second SIGINT or SIGTERM makes it quit without finishing its
# deliveries, as after Ctrl-C and then a closed terminal. A signal that
# comes before the relay has started is passed on as it starts.
relay_pid= stopping=
stop_relay() {
	[ -z "$stopping" ] || return 0
	stopping=1
	[ -z "$relay_pid" ] || kill -TERM "$relay_pid" 2>/dev/null || true
}
trap 'stopping=1' INT
trap stop_relay HUP TERM
bin/holdfast serve --config deploy/local/holdfast.dev.yaml &
relay_pid=$!
if [ -n "$stopping" ]; then
	kill -TERM "$relay_pid" 2>/dev/null || true
fi
# wait returns early, above 128, for each trapped signal: wait again while
# the relay runs, then take its status.
status=0
while :; do
	wait "$relay_pid" && status=0 || status=$?
	running=$(jobs -rp)
	case $'\n'"$running"$'\n' in
	*$'\n'"$relay_pid"$'\n'*) ;;
	*) break ;;
	esac
done
trap - INT TERM HUP
# After a hangup the terminal is gone: the notes below cannot be written,
# and that must not change the exit status.
{
	echo
	if our_redis >/dev/null; then
		echo "run: the relay stopped; now stopping the simulator. The development Redis (pid $pid) is still running; \"make stop\" stops it."
	else
		echo "run: the relay stopped; now stopping the simulator. The development Redis is no longer running."
	fi
} 2>/dev/null || true
exit "$status"
