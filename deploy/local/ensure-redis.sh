#!/usr/bin/env bash
# ensure-redis.sh makes sure redis-server is on PATH, for "make test" and
# "make run". As root on a machine with apt-get it installs the Debian
# package; otherwise it says in one line what to run, and fails.
set -euo pipefail

command -v redis-server >/dev/null 2>&1 && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "redis-server is missing: installing it with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq redis-server >&2
	command -v redis-server >/dev/null 2>&1 && exit 0
	echo "redis-server is still missing after apt-get install redis-server" >&2
	exit 1
fi

if command -v apt-get >/dev/null 2>&1; then
	echo 'redis-server is missing: run "sudo apt-get install -y redis-server" and retry' >&2
else
	echo 'redis-server is missing: install Redis 7 or newer (e.g. "brew install redis") and retry' >&2
fi
exit 1
