#!/usr/bin/env bash
# Provider a as a cluster: three gateways (a1, a2, a3), each its own Caddy
# with the mimi plugin, on one PostgreSQL (a throwaway cluster started
# here), behind a Caddy reverse_proxy load balancer with active health
# checks that answers for a.localhost on 127.0.0.1:$PORT_A. Provider b is a
# single gateway on SQLite, as in examples/federation. All three a
# gateways sign as one provider: their keys are sealed in the database
# under one key_secret.
#
#   examples/cluster/run.sh          the federation scenario through the
#                                    load balancer, then stop
#   examples/cluster/run.sh up       start everything and wait (Ctrl-C
#                                    stops it): try it with mimictl
#   examples/cluster/run.sh chaos    the scenario, then two concurrent
#                                    bursts to bob (alice's group and
#                                    carol's) while one a gateway is
#                                    killed with SIGKILL and restarted;
#                                    counts accepted, delivered,
#                                    duplicated and lost messages
#   KEEP=1 ...                       keep the temporary directory
#
# Needs PostgreSQL's initdb and postgres (Debian's postgresql package;
# .ci/run installs it). Everything listens on 127.0.0.1; nothing is written
# outside a temporary directory (and the Go build cache).
set -euo pipefail
cd "$(dirname "$0")/../.."

PORT_A=${PORT_A:-18743}     # the load balancer: a.localhost
PORT_GW=${PORT_GW:-18751}   # a1, a2, a3 on PORT_GW, +4, +8
PORT_B=${PORT_B:-18783}     # b.localhost
PORT_PG=${PORT_PG:-18799}   # PostgreSQL
mode=${1:-scenario}
case "$mode" in
scenario | up | chaos) ;;
*)
	echo "usage: $0 [up|chaos]" >&2
	exit 2
	;;
esac

tmp=$(mktemp -d)
chmod 0755 "$tmp"
pids=()
pgpid=
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	[ -n "$pgpid" ] && kill "$pgpid" 2>/dev/null || true
	wait 2>/dev/null || true
	if [ "${KEEP:-}" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

# pgbin prints the directory of PostgreSQL's server binaries (initdb,
# postgres, pg_isready, psql): Debian's, else those on PATH.
pgbin() {
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		[ -x "$d/initdb" ] && [ -x "$d/postgres" ] && { echo "$d"; return; }
	done
	if command -v initdb >/dev/null 2>&1; then
		dirname "$(readlink -f "$(command -v initdb)")"
		return
	fi
	echo "PostgreSQL's initdb is not installed (Debian: apt-get install postgresql)" >&2
	exit 1
}

say "building caddy, mimictl and the CA helper"
./xcaddy.sh "$tmp/caddy" >/dev/null
go build -o "$tmp/mimictl" ./cmd/mimictl
go build -o "$tmp/mimiload" ./examples/loadtest/mimiload
"$tmp/mimiload" setup -dir "$tmp" >/dev/null # the shared root CA: root-cert.pem, root-key.pem

say "starting PostgreSQL on 127.0.0.1:$PORT_PG (a throwaway cluster in $tmp/pg)"
bin=$(pgbin)
mkdir -p "$tmp/pg"
as_pg=()
if [ "$(id -u)" = 0 ]; then
	# PostgreSQL refuses to run as root.
	chown postgres "$tmp/pg"
	as_pg=(runuser -u postgres --)
fi
"${as_pg[@]}" "$bin/initdb" -D "$tmp/pg/data" -U postgres --auth=trust >"$tmp/pg/initdb.log" 2>&1
"${as_pg[@]}" "$bin/postgres" -D "$tmp/pg/data" -c listen_addresses=127.0.0.1 -p "$PORT_PG" \
	-c unix_socket_directories="$tmp/pg" >"$tmp/pg.log" 2>&1 &
pgpid=$!
for _ in $(seq 1 100); do
	"$bin/pg_isready" -q -h 127.0.0.1 -p "$PORT_PG" 2>/dev/null && break
	sleep 0.2
done
"$bin/psql" -q -h 127.0.0.1 -p "$PORT_PG" -U postgres -c 'CREATE DATABASE mimi' postgres
dsn="postgres://postgres@127.0.0.1:$PORT_PG/mimi?sslmode=disable"

# The secret every a gateway seals the signing keys under.
MIMI_KEY_SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
export MIMI_KEY_SECRET

globals() {
	local name=$1 port=$2 admin=$3
	cat <<CADDY
{
	admin 127.0.0.1:$admin
	skip_install_trust
	persist_config off
	default_bind 127.0.0.1
	https_port $port
	http_port $((port + 1))
	storage file_system $tmp/$name/storage
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
CADDY
}

# gateway <name> <provider> <port> <store lines> <other provider> <other port> <basic_auth lines> <public port>
gateway() {
	local name=$1 p=$2 port=$3 store=$4 other=$5 oport=$6 users=$7 public=$8
	globals "$name" "$port" $((port + 2))
	cat <<CADDY

$p.localhost:$port {
	tls internal {
		protocols tls1.3
	}
	mimi {
		provider $p.localhost
		ds_domain $p.localhost:$public
		data_dir $tmp/$name/data
		$store
		federation {
			allow_private_addresses
			allow_ports $oport
			resolve $other.localhost 127.0.0.1:$oport
			root_ca $tmp/root-cert.pem
		}
	}
	handle_path /local/* {
		basic_auth {
			$users
		}
		mimi_local {
			provider $p.localhost
			data_dir $tmp/$name/data
		}
	}
	respond "not a MIMI endpoint" 404
}
CADDY
}

hash() { "$tmp/caddy" hash-password --plaintext "$1"; }
gws=(a1 a2 a3)
gw_port() { echo $((PORT_GW + 4 * ${1#a} - 4)); }
a_users="alice $(hash alice-secret)
			carol $(hash carol-secret)"
for g in "${gws[@]}"; do
	mkdir -p "$tmp/$g"
	gateway "$g" a "$(gw_port "$g")" "store postgres $dsn
		key_secret {env.MIMI_KEY_SECRET}" b "$PORT_B" "$a_users" "$PORT_A" >"$tmp/$g/Caddyfile"
done
mkdir -p "$tmp/b" "$tmp/lb"
gateway b b "$PORT_B" "" a "$PORT_A" "bob $(hash bob-secret)" "$PORT_B" >"$tmp/b/Caddyfile"
{
	globals lb "$PORT_A" $((PORT_A + 2))
	cat <<CADDY

a.localhost:$PORT_A {
	tls internal {
		protocols tls1.3
	}
	reverse_proxy https://127.0.0.1:$(gw_port a1) https://127.0.0.1:$(gw_port a2) https://127.0.0.1:$(gw_port a3) {
		# The gateways serve a.localhost: keep the client's Host (to an
		# HTTPS upstream Caddy would send the upstream's address).
		header_up Host {hostport}
		lb_policy round_robin
		# A request that could not reach a gateway (refused connection)
		# goes to another one; one that reached it is never sent twice.
		lb_try_duration 5s
		fail_duration 10s
		health_uri /.well-known/mimi/ds-domain
		health_interval 500ms
		health_timeout 2s
		health_headers {
			Host a.localhost
		}
		transport http {
			tls_server_name a.localhost
			tls_trust_pool file $tmp/root-cert.pem
		}
	}
}
CADDY
} >"$tmp/lb/Caddyfile"

declare -A pid
start() {
	local name=$1 port=$2 host=$3
	env HOME="$tmp/$name/home" XDG_DATA_HOME="$tmp/$name/xdg" XDG_CONFIG_HOME="$tmp/$name/xdg" \
		"$tmp/caddy" run --config "$tmp/$name/Caddyfile" --adapter caddyfile >>"$tmp/$name/caddy.log" 2>&1 &
	pid[$name]=$!
	pids+=("$!")
	for _ in $(seq 1 150); do
		if curl -fsS --cacert "$tmp/root-cert.pem" --resolve "$host.localhost:$port:127.0.0.1" \
			"https://$host.localhost:$port/.well-known/mimi/ds-domain" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.2
	done
	echo "$name did not come up; its log:" >&2
	tail -20 "$tmp/$name/caddy.log" >&2
	exit 1
}
say "starting a1, a2, a3 (a.localhost on PostgreSQL), the load balancer on 127.0.0.1:$PORT_A, and b.localhost on 127.0.0.1:$PORT_B"
for g in "${gws[@]}"; do start "$g" "$(gw_port "$g")" a; done
start lb "$PORT_A" a
start b "$PORT_B" b

printf '$ curl https://a.localhost:%s/verification_key on each a gateway: one key set\n' "$PORT_A"
for g in "${gws[@]}"; do
	curl -fsS --cacert "$tmp/root-cert.pem" --resolve "a.localhost:$(gw_port "$g"):127.0.0.1" -o "$tmp/$g.keys" \
		"https://a.localhost:$(gw_port "$g")/verification_key"
done
if ! cmp -s "$tmp/a1.keys" "$tmp/a2.keys" || ! cmp -s "$tmp/a1.keys" "$tmp/a3.keys"; then
	echo "FAIL: the a gateways publish different verification keys" >&2
	exit 1
fi
echo "a1, a2 and a3 publish the same $(wc -c <"$tmp/a1.keys")-byte key set"

if [ "$mode" = up ]; then
	say "up: a.localhost on 127.0.0.1:$PORT_A (alice / alice-secret), b.localhost on 127.0.0.1:$PORT_B (bob / bob-secret), CA $tmp/root-cert.pem; Ctrl-C stops"
	wait
	exit 0
fi

alice() {
	MIMI_USER=alice MIMI_PASSWORD=alice-secret "$tmp/mimictl" -gateway "https://a.localhost:$PORT_A" \
		-connect "127.0.0.1:$PORT_A" -ca "$tmp/root-cert.pem" -state "$tmp/alice" "$@"
}
carol() {
	MIMI_USER=carol MIMI_PASSWORD=carol-secret "$tmp/mimictl" -gateway "https://a.localhost:$PORT_A" \
		-connect "127.0.0.1:$PORT_A" -ca "$tmp/root-cert.pem" -state "$tmp/carol" "$@"
}
bob() {
	MIMI_USER=bob MIMI_PASSWORD=bob-secret "$tmp/mimictl" -gateway "https://b.localhost:$PORT_B" \
		-connect "127.0.0.1:$PORT_B" -ca "$tmp/root-cert.pem" -state "$tmp/bob" "$@"
}
show() { printf '$ %s\n' "$*"; "$@"; }

say "scenario: alice through the load balancer, bob on b"
show alice client init mimi://a.localhost/d/alice/laptop
show bob client init mimi://b.localhost/d/bob/phone
printf '$ G=$(alice group create)\n'
G=$(alice group create)
echo "$G"
show alice group add "$G" mimi://b.localhost/u/bob
show bob recv -wait 20s
show alice send "$G" hello bob
show bob recv -wait 20s
show bob send "$G" hi alice
show alice recv -wait 20s

if [ "$mode" != chaos ]; then
	say "done"
	exit 0
fi

say "chaos: two bursts to bob through the load balancer (alice's group and carol's), one a gateway killed with SIGKILL and restarted"
carol client init mimi://a.localhost/d/carol/laptop >/dev/null
bob client publish >/dev/null # fresh KeyPackages for carol's group
G2=$(carol group create)
carol group add "$G2" mimi://b.localhost/u/bob
bob recv -wait 20s >/dev/null
n=${BURST:-200}
: >"$tmp/acked.alice"
: >"$tmp/acked.carol"
burst() { # burst <user> <group>: sends one after the other, records each acknowledged one
	local who=$1 g=$2
	for i in $(seq 1 "$n"); do
		if "$who" send "$g" "$who $i" 2>>"$tmp/send.err"; then
			echo "$who $i" >>"$tmp/acked.$who"
		fi
	done
}
burst alice "$G" &
b1=$!
burst carol "$G2" &
b2=$!
victim=${gws[$((RANDOM % 3))]}
kill_at=$((n / 3 + RANDOM % 10))
while [ "$(wc -l <"$tmp/acked.alice")" -lt "$kill_at" ]; do sleep 0.01; done
kill -9 "${pid[$victim]}"
echo "killed $victim (SIGKILL) after $(cat "$tmp"/acked.* | wc -l) acknowledged sends"
wait "${pid[$victim]}" 2>/dev/null || true
sleep 2
start "$victim" "$(gw_port "$victim")" a
echo "restarted $victim"
wait "$b1" "$b2"
# bob receives until every acknowledged message is there (what the killed
# gateway was sending waits for its outbox lease to expire, up to 10 s,
# and goes out from another gateway), then once more for late
# duplicates; at most DRAIN seconds.
: >"$tmp/got"
cat "$tmp"/acked.* >"$tmp/acked"
receive() {
	local out
	out=$(bob recv -wait 5s) || return 1
	printf '%s\n' "$out" | awk -F'\t' '$1 == "message" && $4 ~ /^(alice|carol) [0-9]+$/ { print $4 }' >>"$tmp/got"
}
deadline=$((SECONDS + ${DRAIN:-120}))
while [ "$SECONDS" -lt "$deadline" ]; do
	receive
	if [ -z "$(grep -Fxvf "$tmp/got" "$tmp/acked" || true)" ]; then
		receive
		break
	fi
done
echo "bob's queue drained $((SECONDS - deadline + ${DRAIN:-120})) s after the bursts ended"
status=0
for who in alice carol; do
	acked=$(wc -l <"$tmp/acked.$who")
	grep "^$who " "$tmp/got" >"$tmp/got.$who" || true
	got=$(wc -l <"$tmp/got.$who")
	dups=$(sort "$tmp/got.$who" | uniq -d | wc -l)
	lost=$(grep -Fxvf "$tmp/got.$who" "$tmp/acked.$who" | wc -l || true)
	echo "$who: accepted (acknowledged sends) $acked of $n; delivered to bob $got; duplicated $dups; lost $lost"
	if [ "$lost" -ne 0 ] || ! diff <(grep -Fxf "$tmp/acked.$who" "$tmp/got.$who") "$tmp/acked.$who" >/dev/null; then
		echo "FAIL: bob did not get every message $who's sends acknowledged, in order" >&2
		diff <(grep -Fxf "$tmp/acked.$who" "$tmp/got.$who") "$tmp/acked.$who" >&2 || true
		status=1
	fi
	if [ "$dups" -ne 0 ]; then
		echo "FAIL: bob got duplicates of $who's messages" >&2
		status=1
	fi
done
[ "$status" = 0 ] && echo "OK: every acknowledged message reached bob exactly once, in order per group (an unacknowledged one may also have)"
exit "$status"
