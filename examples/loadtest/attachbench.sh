#!/usr/bin/env bash
# Attachment throughput and the gateway's memory (issue 11): a 1 GiB
# attachment uploaded to and downloaded from the gateway, and the same
# bytes downloaded from Caddy's own file_server, over one HTTP/2 TLS 1.3
# client on loopback, while the resident sets are sampled; once per
# attachment storage backend (local, s3, forward), each in a Caddy of its
# own on fresh data dirs, and once in a plain Caddy alone (`plain`: the
# same Caddy version with only its standard modules, examples/loadtest/
# plaincaddy, serving the same file_server site) for Caddy's own memory.
#
# Where file_server runs (FILE_SERVER): `separate` (the default) runs it in
# a plain Caddy of its own next to the gateway's, on $FS_PORT, started and
# sampled on its own, so that the gateway's Caddy's memory is the
# gateway's; `same` serves it on the gateway's site, in the gateway's
# Caddy, whose memory is then also file_server's (whose copy path makes
# about 0.5 byte of garbage per byte sent: README "Attachments").
#
# Builds ./caddy (and, for s3, a cluster build) and mimiload, writes the
# two-provider Caddyfile of writepath.sh with, on b.localhost, attachments
# up to the wire's limit (1,073,741,815 bytes: 1 GiB less 9) in the
# backend's storage and `handle_path /files/*` serving $tmp/files with
# file_server. For s3,
# `mimiload attachbackend` starts versitygw on loopback (as the S3 storage
# tests do; $VERSITYGW, or versitygw on PATH, or else installed into a
# temporary GOBIN as .ci/run does); for forward, the forward storage tests'
# legacy backend (forwardtest.Backend) over plain HTTP on loopback. Then
# `mimiload attachbench` writes the test file there (random bytes), starts
# Caddy and, REPS times (default 3): uploads the file as an attachment
# (read from disk as it is sent), downloads it from the gateway and the
# file from file_server in alternating order (each hashed and discarded),
# then deletes the attachment. Per transfer a line for people and a
# `RESULT {json}` line (MB/s with MB = 10^6 bytes, Caddy's sampled VmRSS
# peak during it), then per backend a summary: medians, the download's
# ratio to file_server, Caddy's VmHWM over its run and the sampled peaks
# of RssAnon and RssFile; the summaries again together at the end.
# Disk: the test file and one stored attachment (2 GiB) in a temporary
# directory, removed at the end (KEEP=1 keeps it).
#
# Usage: examples/loadtest/attachbench.sh [mimiload attachbench flags...]
# The s3 backend needs the cluster build (caddymodule/cluster): its Caddy is
# CADDY_CLUSTER, or built with CLUSTER=1 ./xcaddy.sh into the temporary
# directory; plain, local and forward run the default build (CADDY).
#
# Environment: STORAGES ("plain local s3 forward"), REPS (3), PORT (19443),
# HTTP_PORT (19080), FILE_SERVER (separate or same), FS_PORT (PORT+1) and
# FS_HTTP_PORT (HTTP_PORT+1) of the separate file_server, CADDY (a built Caddy to use instead of building
# ./caddy), CADDY_CLUSTER (a cluster build for s3, instead of building
# one), VERSITYGW (the versitygw binary), ADMIN (off; an address turns
# Caddy's admin endpoint on, with /debug/pprof/), PROFILES (a directory:
# with ADMIN, Caddy's heap profile before and after every transfer is saved
# there), ONE_GATEWAY=1 (a.localhost without its gateway: the transfers use
# b.localhost's alone, so Caddy's memory is then one gateway's; by default
# Caddy also runs a's, idle, as in writepath.sh), KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
. examples/loadtest/lib.sh

# The versitygw release .ci/run installs.
VERSITYGW_MODULE=github.com/versity/versitygw/cmd/versitygw@v1.8.0

# find_versitygw sets $VERSITYGW: given, on PATH, or installed into a
# temporary GOBIN (so that its dependencies stay out of go.mod).
find_versitygw() {
	if [ -n "${VERSITYGW:-}" ]; then return; fi
	if VERSITYGW=$(command -v versitygw); then return; fi
	echo "# installing $VERSITYGW_MODULE into $tmp/gobin" >&2
	GOFLAGS= GOBIN="$tmp/gobin" go install "$VERSITYGW_MODULE" >&2
	VERSITYGW=$tmp/gobin/versitygw
}

# start_backend starts mimiload attachbackend for $1 (s3 or forward) and
# sets $storage_lines to the storage option it wrote.
start_backend() {
	rm -f "$tmp/backend.conf"
	"$tmp/mimiload" attachbackend -kind "$1" -dir "$tmp/backend" -out "$tmp/backend.conf" ${VERSITYGW:+-versitygw "$VERSITYGW"} &
	backend_pid=$!
	for _ in $(seq 600); do
		[ -f "$tmp/backend.conf" ] && break
		kill -0 "$backend_pid" 2>/dev/null || { echo "the $1 backend exited" >&2; exit 1; }
		sleep 0.1
	done
	[ -f "$tmp/backend.conf" ] || { echo "the $1 backend did not start within 60 s" >&2; exit 1; }
	storage_lines=$(sed 's/^/\t\t\t/' "$tmp/backend.conf")
}

# configure_plain writes a Caddyfile of the same two sites without the
# gateway: /healthz answers 200 on both, b.localhost has $B_SITE.
configure_plain() {
	"$tmp/mimiload" setup -dir "$tmp"
	{
		caddy_globals
		cat <<CADDY

a.localhost:$PORT {
	tls internal {
		protocols tls1.3
	}
	respond /healthz 200
	respond "not mimi" 404
}

b.localhost:$PORT {
	tls internal {
		protocols tls1.3
	}
	respond /healthz 200
$B_SITE
	respond "not mimi" 404
}
CADDY
	} >"$tmp/Caddyfile"
}

# configure_file_server writes $tmp/Caddyfile.fs: the plain Caddy of
# FILE_SERVER=separate, b.localhost on $FS_PORT with /healthz and $B_SITE,
# its state apart from the gateway's, certificates from the same root.
configure_file_server() {
	{
		PORT=$FS_PORT HTTP_PORT=$FS_HTTP_PORT ADMIN= CADDY_STORAGE=$tmp/storage-fs caddy_globals
		cat <<CADDY

b.localhost:$FS_PORT {
	tls internal {
		protocols tls1.3
	}
	respond /healthz 200
$B_SITE
	respond "not file_server" 404
}
CADDY
	} >"$tmp/Caddyfile.fs"
}

stop_backend() {
	if [ -n "$backend_pid" ]; then
		kill "$backend_pid" 2>/dev/null || true
		wait "$backend_pid" 2>/dev/null || true
		backend_pid=
	fi
	rm -rf "$tmp/backend"
}

FILES_SITE="	handle_path /files/* {
		root * $tmp/files
		file_server
	}"
: "${FILE_SERVER:=separate}" "${FS_PORT:=$((PORT + 1))}" "${FS_HTTP_PORT:=$((HTTP_PORT + 1))}"
case $FILE_SERVER in
separate | same) ;;
*) echo "FILE_SERVER=$FILE_SERVER: want separate or same" >&2; exit 1 ;;
esac
port_free
if [ "$FILE_SERVER" = separate ]; then PORT=$FS_PORT port_free; fi
build
# The binaries measured are copies written the same way (cp): how many of
# a binary's pages a process maps in (RssFile) depends on the page cache's
# folios of the file, which depend on how it was written (go build, cp):
# one binary mapped 47.5 MiB of its pages idle as go build wrote it, 43.9
# MiB as cp wrote it.
cp "$CADDY" "$tmp/caddy"
CADDY=$tmp/caddy
case " ${STORAGES:=plain local s3 forward} " in
*" s3 "*)
	find_versitygw
	if [ -z "${CADDY_CLUSTER:-}" ]; then
		CLUSTER=1 ./xcaddy.sh "$tmp/caddy-cluster.built" >&2
		CADDY_CLUSTER=$tmp/caddy-cluster.built
	fi
	cp "$CADDY_CLUSTER" "$tmp/caddy-cluster"
	;;
esac
case " $STORAGES $FILE_SERVER " in
*" plain "* | *" separate "*)
	# As xcaddy.sh builds cmd/caddy, from the Caddy version go.mod pins.
	CGO_ENABLED=0 go build -trimpath -ldflags "-w -s" -tags nobadger,nomysql,nopgx -o "$tmp/plaincaddy.built" ./examples/loadtest/plaincaddy
	cp "$tmp/plaincaddy.built" "$tmp/plaincaddy"
	;;
esac
conditions
for storage in $STORAGES; do
	# Fresh data dirs and certificates: every backend's Caddy starts as the first.
	rm -rf "$tmp/a" "$tmp/b" "$tmp/storage" "$tmp/storage-fs" "$tmp/home" "$tmp/xdg" "$tmp/pp" "$tmp"/root-*.pem
	storage_lines= bin=$CADDY plain= fs_flags=() B_SITE=$FILES_SITE
	case $storage in
	plain) bin=$tmp/plaincaddy plain=-plain ;;
	local) ;;
	s3) start_backend s3; bin=$tmp/caddy-cluster ;;
	forward) start_backend forward ;;
	*) echo "unknown storage $storage: want plain, local, s3 or forward" >&2; exit 1 ;;
	esac
	B_MIMI="		attachments {
			max_size 1073741815B${storage_lines:+
$storage_lines}
		}"
	if [ -n "$plain" ]; then
		configure_plain
	elif [ "$FILE_SERVER" = separate ]; then
		# The gateway's site without file_server; the plain Caddy serves it.
		B_SITE= configure
		configure_file_server
		fs_flags=(-fs-caddy "$tmp/plaincaddy" -fs-config "$tmp/Caddyfile.fs" -fs-addr "127.0.0.1:$FS_PORT" -fs-log "$tmp/caddy-fs.log")
	else
		configure
	fi
	"${caddy_env[@]}" "$tmp/mimiload" attachbench -dir "$tmp" -addr "127.0.0.1:$PORT" -caddy "$bin" $plain "${fs_flags[@]}" \
		-config "$tmp/Caddyfile" -log "$tmp/caddy.log" -file "$tmp/files/blob.bin" -files-path /files/blob.bin \
		-reps "${REPS:-3}" -storage "$storage" ${ADMIN:+-admin "$ADMIN"} ${PROFILES:+-profiles "$PROFILES"} "$@" |
		tee -a "$tmp/summaries.all" ||
		{ status=$?; tail -20 "$tmp/caddy.log" >&2; exit $status; }
	stop_backend
done
echo "# all backends"
grep '^\[[a-z0-9]*\] summary:' "$tmp/summaries.all" || true
