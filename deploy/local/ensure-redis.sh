#!/usr/bin/env bash
# ensure-redis.sh makes sure redis-server is on PATH, for "make test" and
# "make run" (see ensure-command.sh).
exec "$(dirname "$0")/ensure-command.sh" redis-server redis-server 'Redis 7 or newer (e.g. "brew install redis")'
