#!/usr/bin/env bash
# ensure-redis.sh makes sure redis-server is on PATH, for "make test" and
# "make run", and swaks, which the README tour uses (see
# ensure-command.sh). A missing redis-server fails; a missing swaks only
# gets a line saying what to run.
set -euo pipefail
here=$(dirname "$0")
"$here/ensure-command.sh" swaks 'swaks libnet-ssleay-perl libio-socket-ssl-perl' 'swaks (e.g. "brew install swaks")' ||
	echo "(swaks is only needed to send mail by hand, as in the README tour)" >&2
exec "$here/ensure-command.sh" redis-server redis-server 'Redis 7 or newer (e.g. "brew install redis")'
