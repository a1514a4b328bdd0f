#!/usr/bin/env bash
# ensure-promtool.sh makes sure promtool is on PATH, for "make lint" and
# "make test" (the alert rules' tests). Debian's prometheus package
# provides it (see ensure-command.sh).
exec "$(dirname "$0")/ensure-command.sh" promtool prometheus 'Prometheus 2.42 or newer (it includes promtool)'
