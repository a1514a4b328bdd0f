#!/usr/bin/env bash
# Holdfast and Postfix side by side, on this machine, in one run, loaded by
# the same tool (hfload) with the same authentication (AUTH PLAIN).
#
#   Holdfast: a private redis-server (AOF on, appendfsync everysec), the
#   relay delivering to the Exchange Online simulator with 20 sending
#   mailboxes.
#   Postfix: Debian's postfix as a private instance (its own
#   config_directory and queue_directory under a temporary directory),
#   listening on loopback only, SASL AUTH through Cyrus sasldb, relaying
#   everything to Debian's smtp-sink on loopback.
#
# Loads, in rounds alternated between the two relays:
#   persistent: SESSIONS (20) sessions, MESSAGES (20,000) messages of SIZE
#               (2 KB), AUTH once per session, no TLS;
#   reconnect:  a new connection, STARTTLS and AUTH for every message,
#               RECONNECT_MESSAGES (20,000) messages over 20 sessions; the
#               client offers X25519 only, the key exchange Postfix's
#               OpenSSL 3.0 negotiates, so that both do the same one (Go's
#               default, the hybrid X25519MLKEM768, costs more on both
#               sides, and Holdfast takes it from clients that offer it).
# Each load runs twice a round: with delivery paused on both relays (a
# second Holdfast with delivery off, on a Redis of its own; Postfix with
# every message put on hold at the end of DATA, then deleted), which is
# how fast each takes a burst of mail; and with delivery running, where
# the relay shares its CPUs with its upstream (and with the load, see
# CPUs) until the sink or the simulator has every message (end to end).
# Then Holdfast's peak RSS with QUEUED (100,000) messages queued
# (delivery off, so that they stay queued).
#
# CPUs: with 4 or more CPUs, the load tool runs on half of them and
# everything else (both relays, Redis, the simulator, smtp-sink) on the
# other half, so that the load does not take the relays' CPU. With fewer
# all share them. LOAD_CPUS and RELAY_CPUS (taskset lists, e.g. 2-3 and
# 0-1) set the split by hand; LOAD_CPUS= (empty) turns it off.
#
# It prints ingress messages/s and p99 both ways, end-to-end messages/s,
# the Holdfast/Postfix ratios, the peak RSS, and pass or short against
# the targets: ingress >= 6x Postfix (shown for both ways of measuring
# it), end to end >= 3x Postfix, peak RSS < 150 MB. It installs what
# it needs (postfix, sasl2-bin, libsasl2-modules, redis-server, time) when
# run as root. Nothing listens on port 25 before, during or after the run;
# everything it starts it stops by PID.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-20000}
RECONNECT_MESSAGES=${RECONNECT_MESSAGES:-20000}
QUEUED=${QUEUED:-100000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-2048}
MAILBOXES=20
E2E_TIMEOUT=${E2E_TIMEOUT:-180}
PASSWORD=bench-password

top=$(cd "$(dirname "$0")/../.." && pwd)
bin=$top/bin
say() { printf 'compare: %s\n' "$*" >&2; }

# --- what it needs -----------------------------------------------------------
need=()
command -v postfix >/dev/null 2>&1 || need+=(postfix)
command -v smtp-sink >/dev/null 2>&1 || need+=(postfix)
command -v saslpasswd2 >/dev/null 2>&1 || need+=(sasl2-bin)
ls /usr/lib/*/sasl2/libsasldb.so* >/dev/null 2>&1 || need+=(libsasl2-modules libsasl2-modules-db)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ "${#need[@]}" -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		say "missing: ${need[*]}; run as root, or: sudo apt-get install -y ${need[*]}"
		exit 1
	fi
	say "installing ${need[*]} (postfix with \"No configuration\": its own instance is never set up)"
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	# The package lists of a fresh machine are empty until an update.
	apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
fi
if [ "$(id -u)" -ne 0 ]; then
	say "Postfix's master runs as root: run this as root"
	exit 1
fi
port25() { python3 -c 'import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex(("127.0.0.1",25))==0 else 1)'; }
if port25; then
	say "something listens on port 25 (the package's default Postfix?): stop it first; this script never uses port 25"
	exit 1
fi

# The CPU split: RELAY_CPUS for the relays and their upstreams, LOAD_CPUS
# for hfload; the on_relay_cpus and on_load_cpus prefixes run a command on
# them.
if [ -z "${LOAD_CPUS+set}" ]; then
	read -r RELAY_CPUS LOAD_CPUS < <(python3 -c '
import os
c = sorted(os.sched_getaffinity(0))
h = len(c) // 2
print(",".join(map(str, c[:h])), ",".join(map(str, c[h:]))) if len(c) >= 4 else print("", "")')
fi
RELAY_CPUS=${RELAY_CPUS:-}
LOAD_CPUS=${LOAD_CPUS:-}
if [ -n "$LOAD_CPUS" ] && [ -z "$RELAY_CPUS" ]; then
	say "LOAD_CPUS is set: set RELAY_CPUS too (e.g. RELAY_CPUS=0-1 LOAD_CPUS=2-3), or LOAD_CPUS= to share all CPUs"
	exit 1
fi
if [ -n "$LOAD_CPUS" ]; then
	command -v taskset >/dev/null 2>&1 || { say "taskset is missing: apt-get install util-linux, or LOAD_CPUS= to share all CPUs"; exit 1; }
	say "the load on CPUs $LOAD_CPUS; the relays, Redis, the simulator and smtp-sink on CPUs $RELAY_CPUS"
	cpu_note="the load tool on CPUs $LOAD_CPUS, the relays and their upstreams on CPUs $RELAY_CPUS"
else
	cpu_note="all processes sharing $(nproc) CPUs"
fi
# Prefixes, not functions: a function run with & is a subshell, and $!
# would be its PID instead of the process's.
on_relay_cpus=() on_load_cpus=()
if [ -n "$LOAD_CPUS" ]; then
	on_relay_cpus=(taskset -c "$RELAY_CPUS") on_load_cpus=(taskset -c "$LOAD_CPUS")
fi

say "building bin/holdfast, bin/hfload and bin/o365sim"
(cd "$top" && go build -o bin/holdfast ./cmd/holdfast && go build -o bin/hfload ./cmd/hfload && go build -o bin/o365sim ./cmd/o365sim)

work=$(mktemp -d /tmp/holdfast-compare.XXXXXX)
chmod 755 "$work"
pids=()
pf=$work/postfix
cleanup() {
	local i
	if [ -s "$pf/queue/pid/master.pid" ]; then
		kill -TERM "$(tr -d ' ' <"$pf/queue/pid/master.pid")" 2>/dev/null || true
	fi
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null && wait "${pids[i]}" 2>/dev/null || true
	done
	sleep 1
	if [ -n "${KEEP:-}" ]; then say "kept $work"; else rm -rf "$work"; fi
	if port25; then say "WARNING: something listens on port 25 now"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
	for _ in $(seq 1 150); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	say "nothing listens on 127.0.0.1:$1"
	return 1
}
json() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

"$bin/holdfast" creds devcert --out "$work/tls" --host bench.localhost,127.0.0.1 >/dev/null
boxes=""
for i in $(seq 1 $MAILBOXES); do boxes="$boxes${boxes:+,}box$i@bench.example"; done

# --- Holdfast: Redis, the simulator, the relay --------------------------------
start_redis() { # PORT DIR: a private redis-server, AOF on, appendfsync everysec
	"${on_relay_cpus[@]}" redis-server --bind 127.0.0.1 --port "$1" --dir "$2" --appendonly yes \
		--appendfsync everysec --save '' --maxmemory-policy noeviction --daemonize no \
		--logfile "$2/redis.log" &
	pids+=($!)
	wait_port "$1"
}
redis_port=$(free_port)
start_redis "$redis_port" "$work"

sim_smtp=$(free_port) sim_https=$(free_port) sim_admin=$(free_port)
{
	echo "listen: {https: 127.0.0.1:$sim_https, smtp: 127.0.0.1:$sim_smtp, admin: 127.0.0.1:$sim_admin}"
	echo "token_lifetime: 1h"
	echo "tenants:"
	echo "  - id: bench.example"
	echo "    apps:"
	echo "      - client_id: 0b0e0c00-1111-4222-8333-444455556666"
	echo "        secrets: [{value: bench-secret-value}]"
	echo "        send_as: [\"*\"]"
	echo "    mailboxes:"
	for b in ${boxes//,/ }; do echo "      - address: $b"; done
} >"$work/sim.yaml"
"${on_relay_cpus[@]}" "$bin/o365sim" --config "$work/sim.yaml" --ca-out "$work/sim-ca.pem" 2>"$work/sim.log" &
pids+=($!)
wait_port "$sim_admin"
echo bench-secret-value >"$work/bench.secret"
# The end-to-end wait polls every 20 ms, so its counts are read without
# starting Python: the poll must cost both relays as little CPU as it can.
sim_count() {
	local out
	out=$(curl -s "http://127.0.0.1:$sim_admin/admin/received/count")
	if [[ $out =~ \"count\":[[:space:]]*([0-9]+) ]]; then echo "${BASH_REMATCH[1]}"; fi
}

hf_plain=$(free_port) hf_tls=$(free_port) hf_http=$(free_port) hf_ops=$(free_port)
hash=$("$bin/holdfast" creds hash <<<"$PASSWORD")
holdfast_config() { # SENDER (exchange or off) REDIS PLAIN TLS HTTP OPS: the ports
	cat <<YAML
hostname: bench.localhost
redis:
  addrs: ["127.0.0.1:$2"]
smtp:
  cert_file: $work/tls/cert.pem
  key_file: $work/tls/key.pem
  listeners:
    - addr: "127.0.0.1:$3"
      insecure: true
    - addr: "127.0.0.1:$4"
http:
  addr: "127.0.0.1:$5"
ops:
  addr: "127.0.0.1:$6"
delivery:
  sender: "$1"
  workers: 60
log:
  level: warn
apps:
  - name: bench
    username: bench
    password_hash: "$hash"
    senders: ["@bench.example"]
    credential: bench
    mailbox: box1@bench.example
    sender_mailboxes:
$(for b in ${boxes//,/ }; do echo "      \"$b\": \"$b\""; done)
credentials:
  - name: bench
    tenant: bench.example
    client_id: 0b0e0c00-1111-4222-8333-444455556666
    authority: "https://127.0.0.1:$sim_https"
    client_secret_file: $work/bench.secret
exchange:
  smtp_addr: "127.0.0.1:$sim_smtp"
  graph_url: "https://127.0.0.1:$sim_https"
  ca_file: $work/sim-ca.pem
  messages_per_minute: 1000000
YAML
}
holdfast_config exchange "$redis_port" "$hf_plain" "$hf_tls" "$hf_http" "$hf_ops" >"$work/holdfast.yaml"
holdfast_config off "$redis_port" "$hf_plain" "$hf_tls" "$hf_http" "$hf_ops" >"$work/holdfast-queue.yaml"
"${on_relay_cpus[@]}" "$bin/holdfast" serve --config "$work/holdfast.yaml" >"$work/holdfast.log" 2>&1 &
hf_pid=$!
pids+=($hf_pid)
wait_port "$hf_plain"

# The paused rounds' Holdfast: delivery off, its own Redis (same settings)
# and ports, emptied after each round.
mkdir -p "$work/paused"
redis2_port=$(free_port)
start_redis "$redis2_port" "$work/paused"
hp_plain=$(free_port) hp_tls=$(free_port) hp_http=$(free_port) hp_ops=$(free_port)
holdfast_config off "$redis2_port" "$hp_plain" "$hp_tls" "$hp_http" "$hp_ops" >"$work/holdfast-paused.yaml"
"${on_relay_cpus[@]}" "$bin/holdfast" serve --config "$work/holdfast-paused.yaml" >"$work/holdfast-paused.log" 2>&1 &
pids+=($!)
wait_port "$hp_plain"

# --- Postfix: a private instance, smtp-sink -----------------------------------
sink_port=$(free_port) pf_port=$(free_port)
"${on_relay_cpus[@]}" smtp-sink -c -u nobody "127.0.0.1:$sink_port" 1000 >"$work/sink.out" 2>"$work/sink.err" &
pids+=($!)
wait_port "$sink_port"
# smtp-sink -c prints "sess=N quit=N mesg=N" after each change, ended by a
# carriage return; only the file's end is read.
sink_count() { tail -c 300 "$work/sink.out" | tr '\r' '\n' | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1; }

# Debian's smtpd reads smtpd.conf from $config_directory/sasl.
mkdir -p "$pf/etc/sasl" "$pf/queue" "$pf/data"
chown postfix "$pf/data"
cat >"$pf/etc/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.localhost
mydomain = localhost
myorigin = \$myhostname
mydestination =
local_transport = error:local delivery is off
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
relayhost = [127.0.0.1]:$sink_port
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_peername_lookup = no
smtpd_tls_cert_file = $work/tls/cert.pem
smtpd_tls_key_file = $work/tls/key.pem
smtpd_tls_security_level = may
smtpd_tls_auth_only = no
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = $pf/etc/sasl
alias_maps =
alias_database =
smtpd_sasl_local_domain = bench.localhost
smtpd_sasl_security_options = noanonymous
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
maillog_file_prefixes = /tmp
maillog_file = $pf/maillog
CF
# The package's services, without chroot (the private queue has no copy
# of /etc), and smtpd on a loopback port instead of port 25.
awk -v port="$pf_port" '
	/^smtp[ \t]+inet/ { print "127.0.0.1:" port " inet n - n - - smtpd"; next }
	/^[a-z]/ && NF >= 8 { $5 = "n" }
	{ print }
' /etc/postfix/master.cf >"$pf/etc/master.cf"
cat >"$pf/etc/sasl/smtpd.conf" <<SASL
pwcheck_method: auxprop
auxprop_plugin: sasldb
sasldb_path: $pf/etc/sasl/sasldb2
mech_list: PLAIN LOGIN
SASL
echo "$PASSWORD" | saslpasswd2 -f "$pf/etc/sasl/sasldb2" -c -p -u bench.localhost bench
chown root:postfix "$pf/etc/sasl/sasldb2"
chmod 640 "$pf/etc/sasl/sasldb2"
postfix -c "$pf/etc" check >&2 || { say "postfix check failed:"; cat "$pf/maillog" >&2; exit 1; }
"${on_relay_cpus[@]}" postfix -c "$pf/etc" start >&2 || { say "postfix start failed:"; cat "$pf/maillog" >&2; exit 1; }
wait_port "$pf_port"
pf_pid=$(tr -d ' ' <"$pf/queue/pid/master.pid")
say "Postfix master pid $pf_pid on 127.0.0.1:$pf_port, smtp-sink on $sink_port; Holdfast pid $hf_pid on $hf_plain (plain) and $hf_tls (STARTTLS)"
if port25; then say "port 25 is in use"; exit 1; fi

# --- the rounds -------------------------------------------------------------------
results=$work/results.txt
: >"$results"
# Postfix's paused rounds: every message accepted goes on hold (the same
# queue file write, in the hold queue, and no delivery).
postfix_hold() { # on or off
	local r=""
	[ "$1" = on ] && r="check_client_access static:HOLD"
	postconf -c "$pf/etc" -e "smtpd_end_of_data_restrictions = $r"
	postfix -c "$pf/etc" reload >/dev/null 2>&1
	sleep 1
}
# run_round NAME PATTERN MODE PORT FROM MESSAGES EXTRA...; MODE is
# "paused" (ingress only, then the queue is emptied) or "flowing".
run_round() {
	local name=$1 pattern=$2 mode=$3 port=$4 from=$5 n=$6
	shift 6
	local before out start end count rate p99
	if [ "$name" = holdfast ]; then before=$(sim_count); else before=$(sink_count); fi
	before=${before:-0}
	count=$before
	[ "$name/$mode" = postfix/paused ] && postfix_hold on
	start=$(date +%s.%N)
	out=$("${on_load_cpus[@]}" "$bin/hfload" -smtp "127.0.0.1:$port" -user bench -pass "$PASSWORD" -from "$from" \
		-sessions "$SESSIONS" -messages "$n" -size "$SIZE" -timeout 600s -json "$@") || true
	local accepted failed
	accepted=$(json "$out" accepted) failed=$(json "$out" failed)
	if [ "$failed" -gt 0 ]; then say "$name $pattern $mode: $failed failed, first error: $(json "$out" first_error)"; fi
	rate=$(json "$out" messages_per_second) p99=$(json "$out" p99_ms)
	if [ "$mode" = paused ]; then
		if [ "$name" = holdfast ]; then
			redis-cli -p "$redis2_port" FLUSHALL >/dev/null
		else
			postsuper -c "$pf/etc" -d ALL hold 2>/dev/null
			postfix_hold off
		fi
		printf '%-9s %-10s ingress %6.0f msg/s  p99 %7.2f ms  with delivery paused  (%s accepted, %s failed)\n' \
			"$name" "$pattern" "$rate" "$p99" "$accepted" "$failed" >&2
		[ "$accepted" -eq 0 ] && { say "$name accepted nothing: no figures"; exit 1; }
		echo "$name $pattern-paused $rate $p99 0" >>"$results"
		return
	fi
	local give_up=$((SECONDS + E2E_TIMEOUT))
	while [ "$SECONDS" -lt "$give_up" ]; do
		if [ "$name" = holdfast ]; then count=$(sim_count); else count=$(sink_count); fi
		count=${count:-0}
		[ $((count - before)) -ge "$accepted" ] && break
		sleep 0.02
	done
	end=$(date +%s.%N)
	local e2e
	e2e=$(python3 -c "print('%.0f' % ($((count - before)) / ($end - $start)))")
	printf '%-9s %-10s ingress %6.0f msg/s  p99 %7.2f ms  end to end %6s msg/s  (%s accepted, %s failed, %s delivered)\n' \
		"$name" "$pattern" "$rate" "$p99" "$e2e" "$accepted" "$failed" "$((count - before))" >&2
	if [ "$accepted" -eq 0 ]; then
		say "$name accepted nothing: no figures"
		exit 1
	fi
	echo "$name $pattern $rate $p99 $e2e" >>"$results"
}

# round_of RELAY PATTERN MODE: run_round with the relay's port and sender
# and the pattern's load.
round_of() {
	local port from n=$MESSAGES extra=()
	if [ "$2" = reconnect ]; then n=$RECONNECT_MESSAGES extra=(-reconnect -starttls -x25519); fi
	case "$1/$2/$3" in
	holdfast/persistent/paused) port=$hp_plain ;;
	holdfast/persistent/*) port=$hf_plain ;;
	holdfast/reconnect/paused) port=$hp_tls ;;
	holdfast/reconnect/*) port=$hf_tls ;;
	*) port=$pf_port ;;
	esac
	from=load@bench.example
	[ "$1" = holdfast ] && from=$boxes
	run_round "$1" "$2" "$3" "$port" "$from" "$n" "${extra[@]}"
}

for round in $(seq 1 "$ROUNDS"); do
	say "round $round of $ROUNDS"
	if [ $((round % 2)) -eq 1 ]; then order="holdfast postfix"; else order="postfix holdfast"; fi
	for mode in paused flowing; do
		for pattern in persistent reconnect; do
			for relay in $order; do
				round_of "$relay" "$pattern" "$mode"
			done
		done
	done
done

# --- peak RSS with QUEUED messages queued -----------------------------------------
say "Holdfast's peak RSS with $QUEUED messages queued (delivery off)"
kill -TERM "$hf_pid"
wait "$hf_pid" || true
redis-cli -p "$redis_port" FLUSHALL >/dev/null
"${on_relay_cpus[@]}" "$bin/holdfast" serve --config "$work/holdfast-queue.yaml" >"$work/holdfast-queue.log" 2>&1 &
hf_pid=$!
pids+=($hf_pid)
wait_port "$hf_plain"
"${on_load_cpus[@]}" "$bin/hfload" -smtp "127.0.0.1:$hf_plain" -user bench -pass "$PASSWORD" -from "$boxes" \
	-sessions "$SESSIONS" -messages "$QUEUED" -size "$SIZE" -timeout 600s -json >"$work/queued.json"
rss_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$hf_pid/status")
echo "rss $rss_kb $(json "$(cat "$work/queued.json")" accepted)" >>"$results"

# --- summary ----------------------------------------------------------------------------
python3 - "$results" "$ROUNDS" "$MESSAGES" "$RECONNECT_MESSAGES" "$QUEUED" "$cpu_note" <<'PY'
import statistics as st, sys
path, rounds, msgs, recon, queued, cpus = sys.argv[1:]
rows = {}
rss = None
for line in open(path):
    f = line.split()
    if f[0] == "rss":
        rss = (int(f[1]) / 1024, int(f[2]))
        continue
    rows.setdefault((f[0], f[1]), []).append([float(x) for x in f[2:]])
def med(relay, pattern, i):
    return st.median(r[i] for r in rows[(relay, pattern)])
print()
print("Holdfast vs Postfix, %s rounds alternated, 20 sessions, 2 KB messages, AUTH PLAIN on both (medians)" % rounds)
print("%-40s %12s %12s %8s %8s  %s" % ("", "Holdfast", "Postfix", "ratio", "target", "result"))
def line(label, i, target=None, patterns=("persistent", "reconnect")):
    for pattern in patterns:
        h, p = med("holdfast", pattern, i), med("postfix", pattern, i)
        t = "" if target is None else ">= %gx" % target
        if h == 0 or p == 0:
            print("%-40s %12.1f %12.1f %8s %8s  %s" % (label % pattern, h, p, "n/a", t, "no figure"))
            continue
        ratio = h / p
        res = "" if not t else ("pass" if ratio >= target else "short")
        print("%-40s %12.1f %12.1f %7.2fx %8s  %s" % (label % pattern, h, p, ratio, t, res))
line("ingress msg/s (%s)", 0, 6, ("persistent-paused", "reconnect-paused"))
line("ingress msg/s (%s, delivering)", 0, 6)
for pattern in ("persistent-paused", "reconnect-paused", "persistent", "reconnect"):
    label = pattern if pattern.endswith("-paused") else pattern + ", delivering"
    print("%-40s %12.2f %12.2f" % ("ingress p99 ms (%s)" % label, med("holdfast", pattern, 1), med("postfix", pattern, 1)))
line("end-to-end msg/s (%s)", 2, 3)
if rss:
    print("%-40s %12.0f %12s %8s %8s  %s" % ("Holdfast peak RSS MiB, %d queued" % rss[1], rss[0], "", "", "< 150", "pass" if rss[0] < 150 else "short"))
print("(persistent: %s messages per round, AUTH once per session; reconnect: %s messages, a new connection + STARTTLS + AUTH each;" % (msgs, recon))
print(" -paused: delivery paused on both relays; delivering: delivery running, the relay sharing its CPUs with its upstream;")
print(" %s)" % cpus)
PY
