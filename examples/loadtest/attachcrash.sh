#!/usr/bin/env bash
# kill -9 during a stream of attachment uploads (issue 11).
#
# Builds ./caddy and mimiload, writes the two-provider Caddyfile of
# writepath.sh, then `mimiload attachcrash` starts Caddy, creates a group on
# b.localhost and runs concurrent uploaders of distinct random attachments
# (64 KiB to 8 MiB), kills Caddy with SIGKILL 1-3 s (random) into the
# uploads, restarts it on the same data dir and checks: every acknowledged
# upload downloads whole with its hash; every object file of b's local
# backend is the whole content of an upload that was started (none
# partial); the temporary files of the cut-off uploads, aged by 2 h before
# the restart, are removed by the sweeper. ROUNDS rounds (default 3). Prints
# per round and in total the counts (lost must be 0) and a `CRASH {json}`
# line each; exit status 1 if anything was lost, partial or left behind,
# or nothing was acknowledged.
#
# Usage: examples/loadtest/attachcrash.sh [mimiload attachcrash flags...]
# Environment: ROUNDS (3), PORT (19443), HTTP_PORT (19080), CADDY (a built
# Caddy to use instead of building ./caddy), KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
. examples/loadtest/lib.sh

port_free
build
# mimiload's uploaders are one member: lift max_uploads_in_progress (default
# 4, per member) so that all -c (default 8) upload at once.
B_MIMI="		attachments {
			max_uploads_in_progress 1000
		}"
configure
conditions
"${caddy_env[@]}" "$tmp/mimiload" attachcrash -dir "$tmp" -addr "127.0.0.1:$PORT" -caddy "$CADDY" \
	-config "$tmp/Caddyfile" -log "$tmp/caddy.log" -rounds "${ROUNDS:-3}" "$@" ||
	{ status=$?; tail -20 "$tmp/caddy.log" >&2; exit $status; }
