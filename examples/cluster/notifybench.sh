#!/usr/bin/env bash
# What pg_notify inside a write transaction costs PostgreSQL's group
# commit, and what the update of one shared row (pgstore's queue_sequence,
# which every Append and group post takes a number from) costs: pgbench
# runs one small write transaction (an INSERT of a 100-byte row, as a queue
# entry) plain, with a pg_notify on the store's channel before COMMIT, and
# with an UPDATE of one sequence row first, alternating, at CLIENTS (default 32) connections
# for DURATION seconds (default 10) each, ROUNDS (default 2) times, on a throwaway
# PostgreSQL (lib.sh's start_pg; fsync on, synchronous_commit on) with one
# connection LISTENing, as each gateway's store keeps one. PostgreSQL takes
# a cluster-wide lock when a transaction that notified commits and holds it
# through the commit's WAL flush, so notifying transactions commit one at
# a time; a row lock held until COMMIT does the same to the transactions
# that take it. The transactions per second of the three kinds show what
# that costs on this machine. Prints pgbench's lines and a summary.
set -euo pipefail
cd "$(dirname "$0")/../.."
. examples/cluster/lib.sh

CLIENTS=${CLIENTS:-32}
SECONDS_EACH=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
start_pg
psql=("$pgbin/psql" -q -h 127.0.0.1 -p "$PORT_PG" -U postgres mimi)
"${psql[@]}" -c 'CREATE TABLE entries (id bigserial PRIMARY KEY, body bytea NOT NULL)' \
	-c 'CREATE TABLE queue_sequence (id int PRIMARY KEY, last bigint NOT NULL)' -c 'INSERT INTO queue_sequence VALUES (1, 0)'
cat >"$tmp/plain.sql" <<'SQL'
BEGIN;
INSERT INTO entries (body) VALUES (convert_to(repeat('x', 100), 'UTF8'));
COMMIT;
SQL
cat >"$tmp/notify.sql" <<'SQL'
BEGIN;
INSERT INTO entries (body) VALUES (convert_to(repeat('x', 100), 'UTF8'));
SELECT pg_notify('mimi_queues', 'mimi://a.localhost/d/alice/1 1');
COMMIT;
SQL
cat >"$tmp/sequence.sql" <<'SQL'
BEGIN;
UPDATE queue_sequence SET last = last + 1 WHERE id = 1 RETURNING last;
INSERT INTO entries (body) VALUES (convert_to(repeat('x', 100), 'UTF8'));
COMMIT;
SQL
# One connection LISTENs, as each gateway's store keeps one (it reads
# nothing here: what is measured is the commit path).
"${psql[@]}" -c 'LISTEN mimi_queues' -c "SELECT pg_sleep($((ROUNDS * 2 * (SECONDS_EACH + 5) + 10)))" >/dev/null 2>&1 &
pids+=("$!")
sleep 1
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $("$pgbin/postgres" --version), $CLIENTS clients, ${SECONDS_EACH} s each"
declare -A sum
for round in $(seq 1 "$ROUNDS"); do
	for kind in plain notify sequence; do
		tps=$("$pgbin/pgbench" -n -h 127.0.0.1 -p "$PORT_PG" -U postgres -c "$CLIENTS" -j 2 -T "$SECONDS_EACH" \
			-f "$tmp/$kind.sql" mimi 2>&1 | awk '/^tps/ {print $3; exit}')
		echo "round $round: $kind: $tps transactions/s (load average $(cut -d' ' -f1 /proc/loadavg))"
		sum[$kind]=$(awk -v a="${sum[$kind]:-0}" -v b="$tps" 'BEGIN {print a + b}')
	done
done
awk -v p="${sum[plain]}" -v n="${sum[notify]}" -v q="${sum[sequence]}" -v r="$ROUNDS" \
	'BEGIN {printf "mean: plain %.0f/s, with pg_notify %.0f/s (%.2f of plain), with the one sequence row %.0f/s (%.2f of plain)\n", p / r, n / r, n / p, q / r, q / p}'
