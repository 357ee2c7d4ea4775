#!/usr/bin/env bash
# Builds ./caddy (or the path given as $1) with the caddy-mimi plugin, and
# checks that the binary lists http.handlers.mimi.
#
# The default build is the embedded gateway: Caddy's standard modules and
# caddymodule, without the cluster backends (store postgres, rate-limit
# zones in redis, attachments storage s3) and their clients. CLUSTER=1
# adds them: xcaddy gets --with .../caddymodule/cluster as well, and the
# go build fallback builds cmd/caddy-cluster instead of cmd/caddy. Each
# build has one main package; the binary is still called caddy (or $1).
#
# With xcaddy available it runs xcaddy on this work tree. The module is not
# published, and a module proxy that refuses to say so (403 rather than 404)
# makes xcaddy's `go get` fail; xcaddy then runs again from the module cache
# alone (GOPROXY=off), which the first run and `go mod download` filled.
# If xcaddy still fails, or is not installed, the script builds the
# committed main package, cmd/caddy (cmd/caddy-cluster), with xcaddy's
# flags, which share the go build cache with xcaddy's build.
#
# Environment:
#   CADDY_VERSION  Caddy version for xcaddy (default: the one go.mod pins)
#   XCADDY         xcaddy command to use (default: xcaddy on PATH);
#                  "none" skips xcaddy and builds cmd/caddy (or
#                  cmd/caddy-cluster) directly
#   CLUSTER        1 builds with the cluster backends (caddymodule/cluster,
#                  main cmd/caddy-cluster); default: without
set -euo pipefail
cd "$(dirname "$0")"
out=${1:-./caddy}
mod=$(go list -m)
pinned=$(go list -m -f '{{.Version}}' github.com/caddyserver/caddy/v2)
version=${CADDY_VERSION:-$pinned}
xcaddy=${XCADDY:-xcaddy}
main=./cmd/caddy
withs=(--with "$mod/caddymodule")
case ${CLUSTER:-} in
1)
	main=./cmd/caddy-cluster
	withs+=(--with "$mod/caddymodule/cluster")
	;;
'' | 0) ;;
*)
	echo "xcaddy.sh: CLUSTER=$CLUSTER: want 1, 0 or empty" >&2
	exit 2
	;;
esac

# build_plain builds $main with the flags xcaddy uses by default.
build_plain() {
	CGO_ENABLED=0 go build -trimpath -ldflags "-w -s" -tags nobadger,nomysql,nopgx -o "$out" "$main"
}

# build_xcaddy runs xcaddy with the environment assignments given as
# arguments, copying its output to stderr and to $log.
build_xcaddy() {
	env "$@" CGO_ENABLED=0 "$xcaddy" build "$version" --output "$out" \
		"${withs[@]}" --replace "$mod=$PWD" 2>&1 | tee "$log" >&2
}

# failure prints the last error go reported in $log on one line.
failure() {
	awk '
		/^go: (added|downloading|finding|found|upgraded|creating|to add)/ { block = ""; next }
		/^go: / { block = $0; next }
		/^[ \t]/ && block != "" { sub(/^[ \t]+/, ""); block = block " " $0; next }
		{ if (block != "") last = block; block = "" }
		END { if (block != "") last = block; print last }
	' "$log"
}

how="go build of ${main#./}"
if [ "$xcaddy" != none ] && command -v "$xcaddy" >/dev/null 2>&1; then
	log=$(mktemp)
	trap 'rm -f "$log"' EXIT
	if build_xcaddy; then
		how="xcaddy"
	else
		echo "xcaddy.sh: xcaddy failed ($(failure)); retrying from the module cache (GOPROXY=off)" >&2
		# go mod download checks what it fetches against go.sum; the
		# module cache holds only verified modules, hence GOSUMDB=off.
		if go mod download && build_xcaddy GOPROXY=off GOSUMDB=off; then
			how="xcaddy from the module cache"
		else
			echo "xcaddy.sh: xcaddy could not build the local module ($(failure)); falling back to go build" >&2
			build_plain
			how="go build of ${main#./} after xcaddy failed"
		fi
	fi
else
	build_plain
fi
# Capture first: grep -q would close the pipe early and pipefail would
# report list-modules' SIGPIPE as a failure.
modules=$("$out" list-modules)
grep -qx 'http.handlers.mimi' <<<"$modules" || { echo "xcaddy.sh: module missing from $out" >&2; exit 1; }
if grep -qx 'http.mimi.attachments.s3' <<<"$modules"; then
	cluster=" and the cluster backends"
else
	cluster=""
fi
if [ "${CLUSTER:-}" = 1 ] && [ -z "$cluster" ]; then
	echo "xcaddy.sh: CLUSTER=1 but $out lacks the cluster backends" >&2
	exit 1
elif [ "${CLUSTER:-}" != 1 ] && [ -n "$cluster" ]; then
	echo "xcaddy.sh: $out has the cluster backends without CLUSTER=1" >&2
	exit 1
fi
built=$("$out" version)
built=${built%% *}
if [ "$built" != "$version" ]; then
	echo "xcaddy.sh: built Caddy $built, not $version: go.mod requires $pinned" >&2
fi
echo "built $out (Caddy $built) with http.handlers.mimi$cluster ($how)"
