#!/usr/bin/env bash
# ensure-command.sh COMMAND PACKAGE HINT makes sure COMMAND is on PATH, for
# the make targets that need it. As root on a machine with apt-get it
# installs the Debian PACKAGE; otherwise it says in one line what to run
# (HINT on machines without apt-get), and fails.
set -euo pipefail

cmd=$1 pkg=$2 hint=$3

command -v "$cmd" >/dev/null 2>&1 && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "$cmd is missing: installing the Debian package $pkg with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq --no-install-recommends "$pkg" >&2
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
