#!/usr/bin/env bash
# ensure-promtool.sh makes sure promtool is on PATH, for "make lint" (alert
# rules) and the deploy tests. As root on a machine with apt-get it installs
# Debian's prometheus package, which provides promtool; otherwise it says in
# one line what to run, and fails.
set -euo pipefail

command -v promtool >/dev/null 2>&1 && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "promtool is missing: installing Debian's prometheus package with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq --no-install-recommends prometheus >&2
	command -v promtool >/dev/null 2>&1 && exit 0
	echo "promtool is still missing after apt-get install prometheus" >&2
	exit 1
fi

if command -v apt-get >/dev/null 2>&1; then
	echo 'promtool is missing: run "sudo apt-get install -y prometheus" and retry' >&2
else
	echo 'promtool is missing: install Prometheus 2.42 or newer (it includes promtool) and retry' >&2
fi
exit 1
