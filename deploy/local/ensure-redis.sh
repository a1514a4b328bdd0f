#!/usr/bin/env bash
# ensure-redis.sh makes sure redis-server is on PATH, for "make test" and
# "make run", and swaks, which the README tour uses. As root on a machine
# with apt-get it installs the Debian packages, waiting up to 2 minutes
# for another apt or dpkg to finish; otherwise it says in one line what to
# run. A missing redis-server fails; a missing swaks only gets that line.
set -euo pipefail

# apt_get runs apt-get with its arguments. While another apt or dpkg holds
# the lock ("Could not get lock"), it says so and retries, for up to 2
# minutes.
apt_get() {
	local out deadline=$((SECONDS + 120)) said=""
	while :; do
		if out=$(apt-get "$@" 2>&1); then
			return 0
		fi
		if ! grep -q "Could not get lock\|Unable to acquire the dpkg frontend lock\|is another process using it" <<<"$out" ||
			[ "$SECONDS" -ge "$deadline" ]; then
			printf '%s\n' "$out" >&2
			return 1
		fi
		if [ -z "$said" ]; then
			echo "another apt or dpkg is running (Could not get lock): waiting for it, up to 2 minutes…" >&2
			said=1
		fi
		sleep 3
	done
}

# install PACKAGE OTHERWISE: as root with apt-get, install the Debian
# package; else print the command to run (OTHERWISE without apt-get) and
# fail.
install() {
	local pkg=$1 otherwise=$2
	if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "$pkg is missing: installing it with apt-get" >&2
		export DEBIAN_FRONTEND=noninteractive
		apt_get update -qq && apt_get install -y -qq "$pkg" && return 0
		echo "apt-get install $pkg failed" >&2
		return 1
	fi
	if command -v apt-get >/dev/null 2>&1; then
		echo "$pkg is missing: run \"sudo apt-get install -y $pkg\" and retry" >&2
	else
		echo "$pkg is missing: $otherwise and retry" >&2
	fi
	return 1
}

if ! command -v swaks >/dev/null 2>&1; then
	install swaks 'install it (e.g. "brew install swaks")' || echo "(swaks is only needed to send mail by hand, as in the README tour)" >&2
fi

command -v redis-server >/dev/null 2>&1 && exit 0
install redis-server 'install Redis 7 or newer (e.g. "brew install redis")' || exit 1
command -v redis-server >/dev/null 2>&1 && exit 0
echo "redis-server is still missing after apt-get install redis-server" >&2
exit 1
