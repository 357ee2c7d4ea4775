#!/usr/bin/env bash
# Throughput of provider a as a cluster of 1, 2 and 3 gateways on one
# PostgreSQL behind the Caddy load balancer (lib.sh's set-up, as run.sh),
# with mimiload bench through the load balancer, each mode next to a bare
# route on the gateways in the same run:
#
#   deliver  distinct deliver_message requests signed by b.localhost, the
#            hub of a group (a Welcome introduces it first) with
#            -recipients clients on a: verify, check the hub, append to the
#            queues with the duplicate and replay records, one transaction
#   send     send_message requests (a DS commit of a message: client
#            signature, epoch, membership, then the delivery to the other
#            members' queues in one transaction) of a member of a group
#            hosted on a, its clients bound with a's keys (read from the
#            database under $MIMI_KEY_SECRET)
#   commit   update_client commits (/group_operation) of -c groups hosted
#            on a, one per concurrent request, each group's commits sent
#            in order, epoch after epoch (-commits per group, made before
#            the run): the DS verifies the commit and its update path,
#            stores the group's new state and delivers the commit to the
#            other members' queues
#   bare     GET or POST /bare on the gateways (handle /bare { respond 200 }),
#            through the same load balancer
#
# Per gateway count (SIZES, default "1 2 3") and round (ROUNDS, default 2;
# the sizes interleaved within each round) a fresh database and fresh
# gateways; per mode a 2 s warm-up run (not reported: the pools' connections
# open and prepare their statements), then, around the measured run, the CPU time of PostgreSQL's
# processes and its WAL position, and from the gateways' metrics their CPU
# time and caddy_mimi_store_round_trips_total. Prints mimiload's lines, a
# `CLUSTER {json}` line per run and a table at the end. No timing asserts:
# it fails only when mimiload does (transport errors, unexpected statuses).
#
# Usage: examples/cluster/bench.sh [mimiload bench flags...]
#   e.g. SIZES="1 3" ROUNDS=1 examples/cluster/bench.sh -duration 20s -c 32
# Environment: MODES (default "deliver send commit"), PORT_A, PORT_GW, PORT_B,
# PORT_PG (lib.sh), OUT=file appends the CLUSTER lines to file, KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
. examples/cluster/lib.sh

SIZES=${SIZES:-1 2 3}
ROUNDS=${ROUNDS:-2}
MODES=${MODES:-deliver send commit}
# The bench's recipients never fetch: room for every message; /bare for
# the baseline, on the gateways behind the load balancer.
A_SITE='	handle /bare {
		respond 200
	}'
A_MIMI='		queue_max_messages 10000000
		queue_max_bytes 64GiB'

# tree_ticks prints the CPU time, in clock ticks, of process $1 and of its
# descendants (with the time of those that exited and were reaped).
# A process may exit between the glob and its read: cat skips it.
tree_ticks() {
	{ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '
		{
			pid = $1; line = $0; sub(/^[0-9]+ \(.*\) /, "", line); split(line, f, " ")
			ppid[pid] = f[2]; ticks[pid] = f[12] + f[13] + f[14] + f[15]
		}
		END {
			for (p in ppid) {
				q = p
				while (q != "" && q != root && q != 0 && q != 1) q = ppid[q]
				if (q == root) sum += ticks[p]
			}
			print sum + 0
		}'
}

wal_lsn() {
	"$pgbin/psql" -At -h 127.0.0.1 -p "$PORT_PG" -U postgres -c "SELECT pg_current_wal_lsn() - '0/0'" mimi
}

say "building caddy, mimictl and mimiload"
build
hz=$(getconf CLK_TCK)
rows="$tmp/rows.jsonl"
: >"$rows"
echo "# $(date -u +%FT%TZ) $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), load average $(cut -d' ' -f1-3 /proc/loadavg), $("$tmp/caddy" version | cut -d' ' -f1), $(go version | cut -d' ' -f3), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

for round in $(seq 1 "$ROUNDS"); do
	for n in $SIZES; do
		say "round $round: $n gateway(s) on PostgreSQL behind the load balancer (load average $(cut -d' ' -f1-3 /proc/loadavg))"
		rm -rf "$tmp/pg" "$tmp"/a[0-9]* "$tmp/b" "$tmp/lb" "$tmp/pg.log"
		start_pg
		configure "$n"
		start_all
		check_keys
		metrics=
		for g in "${gws[@]}"; do metrics="$metrics${metrics:+,}http://127.0.0.1:$(($(gw_port "$g") + 2))/metrics"; done
		for mode in $MODES; do
			# A short run first, not reported: the pools open their
			# connections, which prepare their statements, and the
			# gateways fetch b's keys (the commit mode with fewer
			# commits made per group: the run is short).
			"$tmp/mimiload" bench -dir "$tmp" -addr "127.0.0.1:$PORT_A" -receiver a.localhost \
				-sender b.localhost -sender-keys "$tmp/b/data/keys" -receiver-store "$dsn" \
				-modes "$mode" "$@" -duration 2s -slices 1 -commits 40 >"$tmp/warmup" || {
				status=$?
				cat "$tmp/warmup" >&2
				exit $status
			}
			load0=$(cut -d' ' -f1 /proc/loadavg)
			pg0=$(tree_ticks "$pgpid")
			wal0=$(wal_lsn)
			"$tmp/mimiload" bench -dir "$tmp" -addr "127.0.0.1:$PORT_A" -receiver a.localhost \
				-sender b.localhost -sender-keys "$tmp/b/data/keys" -receiver-store "$dsn" \
				-metrics "$metrics" -modes "$mode" "$@" | tee "$tmp/out" || {
				status=$?
				for g in "${gws[@]}" lb b; do tail -5 "$tmp/$g/caddy.log" >&2; done
				exit $status
			}
			pg1=$(tree_ticks "$pgpid")
			wal1=$(wal_lsn)
			load1=$(cut -d' ' -f1 /proc/loadavg)
			bare=$(grep '^RESULT ' "$tmp/out" | sed 's/^RESULT //' | jq -c 'select(.mode == "bare")')
			grep '^RESULT ' "$tmp/out" | sed 's/^RESULT //' | jq -c --argjson n "$n" --argjson round "$round" \
				--argjson bare "$bare" --arg load "$load0-$load1" \
				--argjson pgcpu "$(((pg1 - pg0) * 1000000 / hz))" --argjson wal "$((wal1 - wal0))" \
				'select(.mode != "bare") | {gateways: $n, round: $round, mode, rps, p50_ms, p99_ms, bare_rps,
					ratio_to_bare, bare_p50_ms: $bare.p50_ms, bare_p99_ms: $bare.p99_ms,
					round_trips_per_req: .store_round_trips_per_req, bare_round_trips_per_req: ($bare.store_round_trips_per_req // 0),
					gateway_cpu_us_per_req: .server_cpu_us_per_req, bare_gateway_cpu_us_per_req: $bare.server_cpu_us_per_req,
					pg_cpu_us_per_req: (($pgcpu / .requests) * 10 | round / 10),
					wal_bytes_per_req: ($wal / .requests | round), requests, load: $load}' |
				tee -a "$rows" | sed 's/^/CLUSTER /'
		done
		stop_all
	done
done

[ -n "${OUT:-}" ] && cat "$rows" >>"$OUT"
say "summary (round trips, CPU and WAL per request; CPU: the gateways' Caddy processes summed, PostgreSQL's processes)"
jq -r -s '["N","round","mode","req/s","p50 ms","p99 ms","bare req/s","ratio","RT/req","bare RT/req","gw CPU us","bare gw CPU us","PG CPU us","WAL B","load"],
	(sort_by(.mode, .gateways, .round)[] | [.gateways, .round, .mode, .rps, .p50_ms, .p99_ms, .bare_rps, .ratio_to_bare,
		.round_trips_per_req, .bare_round_trips_per_req, .gateway_cpu_us_per_req, .bare_gateway_cpu_us_per_req,
		.pg_cpu_us_per_req, .wal_bytes_per_req, .load]) | map(tostring) | join("\t")' "$rows" | column -t -s $'\t'
