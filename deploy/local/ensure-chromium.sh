#!/usr/bin/env bash
# ensure-chromium.sh makes sure Debian's chromium is at /usr/bin/chromium,
# for the status page test of "make test". As root on a machine with
# apt-get it installs the package; otherwise it says in one line what to
# run, and fails.
set -euo pipefail

[ -x /usr/bin/chromium ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "chromium is missing: installing it with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq chromium >&2
	[ -x /usr/bin/chromium ] && exit 0
	echo "/usr/bin/chromium is still missing after apt-get install chromium" >&2
	exit 1
fi

if command -v apt-get >/dev/null 2>&1; then
	echo 'chromium is missing: run "sudo apt-get install -y chromium" and retry' >&2
else
	echo 'chromium is missing: the status page test needs Debian'"'"'s chromium at /usr/bin/chromium' >&2
fi
exit 1
