#!/usr/bin/env bash
# Attachment throughput and the gateway's memory (issue 11): a 1 GiB
# attachment uploaded to and downloaded from the gateway, and the same
# bytes downloaded from Caddy's own file_server on the same site, over one
# HTTP/2 TLS 1.3 client on loopback, while Caddy's resident set is sampled.
#
# Builds ./caddy and mimiload, writes the two-provider Caddyfile of
# writepath.sh with, on b.localhost, attachments up to the wire's limit
# (1,073,741,815 bytes: 1 GiB less 9) and `handle_path /files/*` serving
# $tmp/files with file_server. `mimiload attachbench` writes the test file
# there (random bytes), starts Caddy and, REPS times (default 3): uploads
# the file as an attachment (read from disk as it is sent), downloads it
# from the gateway and the file from file_server in alternating order
# (each hashed and discarded), then deletes the attachment. Per transfer a
# line for people and a `RESULT {json}` line (MB/s with MB = 10^6 bytes,
# Caddy's sampled VmRSS peak during it), then a summary: medians, the
# download's ratio to file_server, Caddy's VmHWM over the whole run.
# Disk: the test file and one stored attachment (2 GiB) in a temporary
# directory, removed at the end (KEEP=1 keeps it).
#
# Usage: examples/loadtest/attachbench.sh [mimiload attachbench flags...]
# Environment: REPS (3), PORT (19443), HTTP_PORT (19080), CADDY (a built
# Caddy to use instead of building ./caddy), ADMIN (off; an
# address turns Caddy's admin endpoint on, with /debug/pprof/), PROFILES (a
# directory: with ADMIN, Caddy's heap profile before and after every
# transfer is saved there), KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
. examples/loadtest/lib.sh

B_SITE="	handle_path /files/* {
		root * $tmp/files
		file_server
	}"
B_MIMI="		attachments {
			max_size 1073741815B
		}"
port_free
build
configure
conditions
"${caddy_env[@]}" "$tmp/mimiload" attachbench -dir "$tmp" -addr "127.0.0.1:$PORT" -caddy "$CADDY" \
	-config "$tmp/Caddyfile" -log "$tmp/caddy.log" -file "$tmp/files/blob.bin" -files-path /files/blob.bin \
	-reps "${REPS:-3}" ${ADMIN:+-admin "$ADMIN"} ${PROFILES:+-profiles "$PROFILES"} "$@" ||
	{ status=$?; tail -20 "$tmp/caddy.log" >&2; exit $status; }
