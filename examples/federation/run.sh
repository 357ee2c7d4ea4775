#!/usr/bin/env bash
# Two providers on one machine, each its own Caddy with the mimi plugin:
# a.localhost on 127.0.0.1:$PORT_A and b.localhost on 127.0.0.1:$PORT_B,
# with certificates of one shared local CA, federated over loopback.
#
#   examples/federation/run.sh           the scenario below, then stop
#   examples/federation/run.sh crash     the scenario, then kill -9 of a
#                                        during a burst of messages to b
#   examples/federation/run.sh backend   b delivers to a legacy backend
#                                        (backend.js, Node.js) instead of
#                                        its local queues: alice's group
#                                        reaches bob through it
#   KEEP=1 ...                           keep the temporary directory
#
# Scenario (with mimictl, each user through their own provider's local
# client API): alice of a creates a group and adds bob of b (a claims bob's
# KeyPackage from b); a's outbox delivers the Welcome to b; bob joins (b
# relays his welcome_info to a, the group's hub); they exchange messages
# (bob's go through b, relayed to a); alice removes bob.
#
# crash: alice sends a burst of messages while a is killed with SIGKILL
# and restarted; every message whose send was acknowledged must reach bob
# exactly once and in order, through a's outbox after the restart.
#
# backend: b runs with "delivery backend" (docs/protocol.md §11): what a
# delivers for bob (the Welcome, alice's messages) is POSTed, signed, to
# backend.js on 127.0.0.1:$PORT_BACKEND, which checks the signature, drops
# duplicates and prints each message; bob's queue at b stays empty.
#
# Everything listens on 127.0.0.1; nothing leaves the machine, and nothing
# is written outside a temporary directory (and the Go build cache).
set -euo pipefail
cd "$(dirname "$0")/../.."

PORT_A=${PORT_A:-18443}
PORT_B=${PORT_B:-28443}
PORT_BACKEND=${PORT_BACKEND:-18600}
mode=${1:-scenario}
case "$mode" in
scenario | crash | backend) ;;
*)
	echo "usage: $0 [crash|backend]" >&2
	exit 2
	;;
esac

tmp=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [ "${KEEP:-}" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

say "building caddy, mimictl and the CA helper"
./xcaddy.sh "$tmp/caddy" >/dev/null
go build -o "$tmp/mimictl" ./cmd/mimictl
go build -o "$tmp/mimiload" ./examples/loadtest/mimiload
"$tmp/mimiload" setup -dir "$tmp" >/dev/null # the shared root CA: root-cert.pem, root-key.pem

# caddyfile <provider> <port> <admin port> <other provider> <other port> <user> <password hash> [<delivery option>]
caddyfile() {
	local p=$1 port=$2 admin=$3 other=$4 oport=$5 user=$6 hash=$7 delivery=${8:-}
	cat <<CADDY
{
	admin 127.0.0.1:$admin
	skip_install_trust
	persist_config off
	default_bind 127.0.0.1
	https_port $port
	http_port $((port + 1))
	storage file_system $tmp/$p/storage
	pki {
		ca local {
			root {
				format pem_file
				cert $tmp/root-cert.pem
				key $tmp/root-key.pem
			}
		}
	}
	servers {
		0rtt off
	}
}

$p.localhost:$port {
	tls internal {
		protocols tls1.3
	}
	mimi {
		provider $p.localhost
		ds_domain $p.localhost:$port
		data_dir $tmp/$p/data
		federation {
			allow_private_addresses
			allow_ports $oport
			resolve $other.localhost 127.0.0.1:$oport
			root_ca $tmp/root-cert.pem
		}
		$delivery
	}
	handle_path /local/* {
		basic_auth {
			$user $hash
		}
		mimi_local {
			provider $p.localhost
			data_dir $tmp/$p/data
		}
	}
	respond "not a MIMI endpoint" 404
}
CADDY
}

hash() { "$tmp/caddy" hash-password --plaintext "$1"; }
mkdir -p "$tmp/a" "$tmp/b"
caddyfile a "$PORT_A" $((PORT_A + 2)) b "$PORT_B" alice "$(hash alice-secret)" >"$tmp/a/Caddyfile"
delivery_b=
if [ "$mode" = backend ]; then
	# The key shared by b and its backend: 32 random bytes in hex.
	od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$tmp/backend.key"
	delivery_b="delivery backend http://127.0.0.1:$PORT_BACKEND/mimi {
			key_file $tmp/backend.key
		}"
fi
caddyfile b "$PORT_B" $((PORT_B + 2)) a "$PORT_A" bob "$(hash bob-secret)" "$delivery_b" >"$tmp/b/Caddyfile"

declare -A pid
start() {
	local p=$1 port=$2
	# env execs caddy, so $! is caddy's pid (a shell function in between
	# would make it a subshell's, and a kill would leave caddy running).
	env HOME="$tmp/$p/home" XDG_DATA_HOME="$tmp/$p/xdg" XDG_CONFIG_HOME="$tmp/$p/xdg" \
		"$tmp/caddy" run --config "$tmp/$p/Caddyfile" --adapter caddyfile >>"$tmp/$p/caddy.log" 2>&1 &
	pid[$p]=$!
	pids+=("$!")
	for _ in $(seq 1 100); do
		if curl -fsS --cacert "$tmp/root-cert.pem" --resolve "$p.localhost:$port:127.0.0.1" \
			"https://$p.localhost:$port/.well-known/mimi/ds-domain" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.2
	done
	echo "$p.localhost did not come up; its log:" >&2
	tail -20 "$tmp/$p/caddy.log" >&2
	exit 1
}
say "starting a.localhost on 127.0.0.1:$PORT_A and b.localhost on 127.0.0.1:$PORT_B"
start a "$PORT_A"
start b "$PORT_B"

alice() {
	MIMI_USER=alice MIMI_PASSWORD=alice-secret "$tmp/mimictl" -gateway "https://a.localhost:$PORT_A" \
		-connect "127.0.0.1:$PORT_A" -ca "$tmp/root-cert.pem" -state "$tmp/alice" "$@"
}
bob() {
	MIMI_USER=bob MIMI_PASSWORD=bob-secret "$tmp/mimictl" -gateway "https://b.localhost:$PORT_B" \
		-connect "127.0.0.1:$PORT_B" -ca "$tmp/root-cert.pem" -state "$tmp/bob" "$@"
}
. examples/lib/expect.sh

if [ "$mode" = backend ]; then
	say "starting b's legacy backend (examples/federation/backend.js) on 127.0.0.1:$PORT_BACKEND"
	node examples/federation/backend.js -listen "127.0.0.1:$PORT_BACKEND" -key-file "$tmp/backend.key" >"$tmp/backend.out" 2>"$tmp/backend.err" &
	pids+=("$!")
	node examples/federation/backend.js -self-test
	say "scenario: b delivers to its legacy backend"
	show alice client init mimi://a.localhost/d/alice/laptop
	show bob client init mimi://b.localhost/d/bob/phone
	printf '$ G=$(alice group create)\n'
	G=$(alice group create)
	echo "$G"
	show alice group add "$G" mimi://b.localhost/u/bob
	show alice send "$G" hello bob
	show alice send "$G" are you on the legacy backend
	for _ in $(seq 1 100); do
		[ "$(grep -c '^delivery ' "$tmp/backend.out")" -ge 3 ] && break
		sleep 0.2
	done
	say "what b's legacy backend printed"
	cat "$tmp/backend.out"
	printf '$ curl -X POST --data {} http://127.0.0.1:%s/mimi   # unsigned\n' "$PORT_BACKEND"
	curl -s -o /dev/null -w '%{http_code}\n' -X POST --data '{}' "http://127.0.0.1:$PORT_BACKEND/mimi"
	printf '$ bob recv -wait 1s\n'
	out=$(bob recv -wait 1s)
	if [ -n "$out" ]; then
		printf '%s\n' "$out"
		echo "FAIL: bob's queue at b should stay empty with the legacy backend" >&2
		exit 1
	fi
	printf '$ curl http://127.0.0.1:%s/mimi/outbox   # b'"'"'s outbox, admin API\n' $((PORT_B + 2))
	curl -fsS "http://127.0.0.1:$((PORT_B + 2))/mimi/outbox"
	echo
	got=$(grep -c '^delivery ' "$tmp/backend.out" || true)
	if [ "$got" -ne 3 ] || [ "$(grep -c ' welcome ' "$tmp/backend.out")" -ne 1 ] ||
		[ "$(grep -c ' private_message ' "$tmp/backend.out")" -ne 2 ] || grep -q '^duplicate' "$tmp/backend.out"; then
		echo "FAIL: the backend should have printed the Welcome and two messages for bob, once each" >&2
		exit 1
	fi
	echo "OK: b's legacy backend got the Welcome and both messages for bob, once each, signed"
	exit 0
fi

say "scenario"
show alice client init mimi://a.localhost/d/alice/laptop
show bob client init mimi://b.localhost/d/bob/phone
printf '$ G=$(alice group create)\n'
G=$(alice group create)
echo "$G"
show alice group add "$G" mimi://b.localhost/u/bob
t=$'\t'
expect "joined$t$G${t}a.localhost" bob recv -wait 20s
show alice send "$G" hello bob
expect "message$t$G${t}mimi://a.localhost/d/alice/laptop${t}hello bob" bob recv -wait 20s
show bob send "$G" hi alice
expect "message$t$G${t}mimi://b.localhost/d/bob/phone${t}hi alice" alice recv -wait 20s
show alice group remove "$G" mimi://b.localhost/u/bob
expect "removed$t$G${t}mimi://a.localhost/d/alice/laptop" bob recv -wait 20s

if [ "$mode" != crash ]; then
	say "done"
	exit 0
fi

say "crash: a burst from alice to bob, a killed with SIGKILL in the middle and restarted"
bob client publish >/dev/null # bob was removed: fresh KeyPackages for a new group
G2=$(alice group create)
alice group add "$G2" mimi://b.localhost/u/bob
bob recv -wait 20s >/dev/null
n=${BURST:-150}
: >"$tmp/acked"
# The burst runs in the background, one send after the other; a is
# killed at a moment of the burst, whatever is in flight, and restarted.
(
	for i in $(seq 1 "$n"); do
		if alice send "$G2" "burst $i" 2>/dev/null; then
			echo "burst $i" >>"$tmp/acked"
		fi
	done
) &
burst=$!
kill_at=$((n / 3 + RANDOM % 10))
while [ "$(wc -l <"$tmp/acked")" -lt "$kill_at" ]; do
	# A burst that ended short of kill_at (its sends refused) would
	# leave this loop waiting forever, and CI hanging instead of failing.
	if ! kill -0 "$burst" 2>/dev/null; then
		if [ "$(wc -l <"$tmp/acked")" -lt "$kill_at" ]; then
			echo "FAIL: the burst ended with $(wc -l <"$tmp/acked") of $n sends acknowledged, before the kill at $kill_at" >&2
			exit 1
		fi
		break
	fi
	sleep 0.01
done
kill -9 "${pid[a]}"
echo "killed a.localhost (SIGKILL) after $(wc -l <"$tmp/acked") acknowledged sends"
wait "${pid[a]}" 2>/dev/null || true
start a "$PORT_A"
echo "restarted a.localhost; its outbox right after the restart:"
curl -fsS "http://127.0.0.1:$((PORT_A + 2))/mimi/outbox" || true
echo
wait "$burst"
acked=$(wc -l <"$tmp/acked")
# bob drains his queue until nothing more comes for 5 s.
: >"$tmp/got"
while out=$(bob recv -wait 5s) && [ -n "$out" ]; do
	printf '%s\n' "$out" | awk -F'\t' '$1 == "message" { print $4 }' >>"$tmp/got"
done
got=$(wc -l <"$tmp/got")
dups=$(sort "$tmp/got" | uniq -d | wc -l)
echo "sends acknowledged: $acked of $n; messages bob received: $got; duplicates: $dups"
if ! diff <(grep -Fxf "$tmp/acked" "$tmp/got") "$tmp/acked" >/dev/null; then
	echo "FAIL: bob did not get every acknowledged message, in order" >&2
	diff <(grep -Fxf "$tmp/acked" "$tmp/got") "$tmp/acked" >&2 || true
	exit 1
fi
if [ "$dups" -ne 0 ]; then
	echo "FAIL: bob got duplicates" >&2
	exit 1
fi
echo "OK: every acknowledged message reached bob exactly once, in order (an unacknowledged one may also have)"
