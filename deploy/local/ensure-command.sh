#!/usr/bin/env bash
# ensure-command.sh COMMAND PACKAGE HINT makes sure COMMAND is on PATH, for
# the make targets that need it. As root on a machine with apt-get it
# installs the Debian PACKAGE (one, or several separated by spaces), waiting up to 2 minutes for another apt or
# dpkg to finish; otherwise it says in one line what to run (HINT on
# machines without apt-get), and fails.
set -euo pipefail

cmd=$1 pkg=$2 hint=$3

command -v "$cmd" >/dev/null 2>&1 && exit 0

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

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "$cmd is missing: installing the Debian package $pkg with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt_get update -qq && apt_get install -y -qq --no-install-recommends $pkg || {
		echo "apt-get install $pkg failed" >&2
		exit 1
	}
	command -v "$cmd" >/dev/null 2>&1 && exit 0
	echo "$cmd is still missing after apt-get install $pkg" >&2
	exit 1
fi

if command -v apt-get >/dev/null 2>&1; then
	echo "$cmd is missing: run \"sudo apt-get install -y $pkg\" and retry" >&2
else
	echo "$cmd is missing: install $hint and retry" >&2
fi
exit 1
