#!/usr/bin/env bash
# Loopback load test of the gateway's write path (issue 8): signed
# provider requests (replay record + recorded answer), byte-identical
# retries (replay lookup only) and Privacy Pass redemptions (double-spend
# record), each measured next to a bare `respond` route on the same site.
#
# Builds ./caddy with ./xcaddy.sh (XCADDY=none: plain go build) and
# mimiload, starts one Caddy with two providers a.localhost and b.localhost
# on 127.0.0.1:$PORT (internal CA with a root generated here), runs
# `mimiload bench`, stops Caddy. Prints one human line and one
# `RESULT {json}` line per run. No timing asserts: it fails only on
# transport errors or unexpected statuses.
#
# Usage: examples/loadtest/writepath.sh [mimiload bench flags...]
#   e.g. examples/loadtest/writepath.sh -modes signed -duration 20s -c 32
# Environment: PORT (default 19443), HTTP_PORT (19080), KEEP=1 keeps the
# temporary directory (Caddyfile, caddy.log, data dirs), ADMIN=127.0.0.1:PORT
# enables Caddy's admin endpoint there (pprof) and the report of the store's
# commits per second and mean batch size from its metrics.
set -euo pipefail
cd "$(dirname "$0")/../.."
. examples/loadtest/lib.sh

port_free
build
configure
start_caddy
conditions
metrics=()
if [ -n "${ADMIN:-}" ]; then
	metrics=(-metrics "http://$ADMIN/metrics") # the store's commits and mean batch
fi
"$tmp/mimiload" bench -dir "$tmp" -addr "127.0.0.1:$PORT" "${metrics[@]}" "$@" || { status=$?; tail -20 "$tmp/caddy.log" >&2; exit $status; }
