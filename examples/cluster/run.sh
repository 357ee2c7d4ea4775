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
# outside a temporary directory (and the Go build cache). The set-up is in
# lib.sh, which bench.sh shares; PORT_A, PORT_GW, PORT_B and PORT_PG move
# the ports (defaults 18743, 18751, 18783, 18799).
set -euo pipefail
cd "$(dirname "$0")/../.."

mode=${1:-scenario}
case "$mode" in
scenario | up | chaos) ;;
*)
	echo "usage: $0 [up|chaos]" >&2
	exit 2
	;;
esac

. examples/cluster/lib.sh

say "building caddy, mimictl and the CA helper"
build

say "starting PostgreSQL on 127.0.0.1:$PORT_PG (a throwaway cluster in $tmp/pg)"
start_pg
configure 3

say "starting a1, a2, a3 (a.localhost on PostgreSQL), the load balancer on 127.0.0.1:$PORT_A, and b.localhost on 127.0.0.1:$PORT_B"
start_all

printf '$ curl https://a.localhost:<port of a1, a2, a3>/verification_key: one key set\n'
check_keys
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
. examples/lib/expect.sh

say "scenario: alice through the load balancer, bob on b"
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
while [ "$(wc -l <"$tmp/acked.alice")" -lt "$kill_at" ]; do
	# A burst that ended short of kill_at (its sends refused) would
	# leave this loop waiting forever, and CI hanging instead of failing.
	if ! kill -0 "$b1" 2>/dev/null; then
		if [ "$(wc -l <"$tmp/acked.alice")" -lt "$kill_at" ]; then
			echo "FAIL: the burst ended with $(wc -l <"$tmp/acked.alice") of $n sends acknowledged, before the kill at $kill_at" >&2
			exit 1
		fi
		break
	fi
	sleep 0.01
done
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
	if [ "$acked" -eq 0 ]; then
		# Every acknowledged message of none is trivially delivered.
		echo "FAIL: none of $who's sends was acknowledged: the burst checked nothing" >&2
		status=1
	fi
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
