#!/usr/bin/env bash
# kill -9 under load (issue 8): durable replay records and spent tokens.
#
# Builds ./caddy and mimiload, writes the two-provider Caddyfile of
# writepath.sh, then `mimiload crash` starts Caddy, runs signed and token
# load, kills Caddy with SIGKILL 1-3 s (random) into the load, restarts it
# on the same data dirs and checks every answer the generator got before
# the kill: each acknowledged signed request's id must still be recorded
# (the same id with other bytes gets 409 replay, the identical bytes the
# recorded answer), each acknowledged token must be refused as spent.
# ROUNDS rounds (default 3). Prints per round and in total: acknowledged,
# checked, lost (must be 0), one `CRASH {json}` line each. Exit status 1 if
# anything acknowledged was lost or could not be checked.
#
# Usage: examples/loadtest/crash.sh [mimiload crash flags...]
# Environment: ROUNDS (3), PORT (19443), HTTP_PORT (19080), KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
. examples/loadtest/lib.sh

port_free
build
configure
conditions
"${caddy_env[@]}" "$tmp/mimiload" crash -dir "$tmp" -addr "127.0.0.1:$PORT" -caddy ./caddy \
	-config "$tmp/Caddyfile" -log "$tmp/caddy.log" -rounds "${ROUNDS:-3}" "$@" ||
	{ status=$?; tail -20 "$tmp/caddy.log" >&2; exit $status; }
