#!/usr/bin/env bash
# ensure-chromium.sh makes sure Debian's chromium is on PATH, for the
# status page test of "make test" (see ensure-command.sh).
exec "$(dirname "$0")/ensure-command.sh" chromium 'chromium fonts-liberation' 'Chromium, at /usr/bin/chromium or on PATH'
