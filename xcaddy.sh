#!/usr/bin/env bash
# Builds ./caddy with the caddy-mimi plugin. Uses xcaddy when it is on PATH;
# otherwise builds the committed main package in cmd/caddy with xcaddy's flags.
set -euo pipefail
cd "$(dirname "$0")"
out=${1:-./caddy}
if command -v xcaddy >/dev/null 2>&1; then
	xcaddy build "${CADDY_VERSION:-v2.11.9}" --output "$out" --with "$(go list -m)=."
else
	CGO_ENABLED=0 go build -trimpath -ldflags "-w -s" -tags nobadger,nomysql,nopgx -o "$out" ./cmd/caddy
fi
# Capture first: grep -q would close the pipe early and pipefail would
# report list-modules' SIGPIPE as a failure.
modules=$("$out" list-modules)
grep -qx 'http.handlers.mimi' <<<"$modules" || { echo "xcaddy.sh: module missing from $out" >&2; exit 1; }
echo "built $out with http.handlers.mimi"
