#!/usr/bin/env bash
# Loopback load test of the gateway's rate limits.
#
# Builds Caddy with ./xcaddy.sh, starts it on 127.0.0.1 with one rate-limit
# zone per client IP on /.well-known/mimi/ds-domain, and hammers that
# endpoint with h2load (installed from Debian's nghttp2-client if missing)
# for a fixed duration. Every request comes from 127.0.0.1, so they all
# share one bucket: the admitted (2xx) count over the window must be
# RATE * DURATION + BURST within 5 %, and the rest must be 429s. A second,
# slow zone on /verification_key checks Retry-After exactly: the value a
# refused client gets, and that waiting that long is enough.
#
# Bounded: DURATION seconds of load (default 10) on CONNS connections
# (default 4), loopback only. Usage: examples/loadtest/ratelimit.sh
# Environment: RATE (events/s, default 200), BURST (default RATE/2), DURATION,
# CONNS, PORT (default 18443), KEEP=1 keeps the temporary directory.
set -euo pipefail
cd "$(dirname "$0")/../.."

RATE=${RATE:-200}
# A small burst would make the test measure the load generator, not the
# limiter: a token bucket holding B events loses every refill that arrives
# while it is full, so any pause of the client or of the loaded server
# longer than B/RATE lowers the admitted count (on a shared 2-core machine,
# pauses of 100 ms happen). RATE/2 absorbs pauses up to 500 ms; the
# expected count includes the burst.
BURST=${BURST:-$((RATE / 2))}
DURATION=${DURATION:-10}
CONNS=${CONNS:-4}
PORT=${PORT:-18443}
SLOW_EVENTS=6 # per minute on /verification_key: Retry-After 10 s

if ! command -v h2load >/dev/null 2>&1; then
	echo "installing h2load (nghttp2-client)" >&2
	apt-get install -y nghttp2-client >/dev/null 2>&1 ||
		{ apt-get update >/dev/null && apt-get install -y nghttp2-client >/dev/null; }
fi

# The temporary directory and its cleanup (which stops Caddy) are lib.sh's.
. examples/loadtest/lib.sh

./xcaddy.sh "$tmp/caddy" >&2

cat >"$tmp/Caddyfile" <<EOF
{
	admin off
	skip_install_trust
	persist_config off
	http_port 18080
	storage file_system $tmp/storage
	servers {
		0rtt off
	}
}

https://127.0.0.1:$PORT {
	bind 127.0.0.1
	tls internal {
		protocols tls1.3
	}
	mimi {
		provider loadtest.localhost
		ds_domain localhost:$PORT
		data_dir $tmp/data
		rate_limit load {
			key remote_ip
			rate $RATE/1s
			burst $BURST
			endpoints ds_domain
		}
		rate_limit slow {
			key remote_ip
			rate $SLOW_EVENTS/1m
			burst 1
			endpoints verification_key
		}
	}
}
EOF

XDG_DATA_HOME=$tmp/xdg XDG_CONFIG_HOME=$tmp/xdg "$tmp/caddy" run --config "$tmp/Caddyfile" >"$tmp/caddy.log" 2>&1 &
caddy_pid=$!

url=https://127.0.0.1:$PORT
for _ in $(seq 1 100); do
	if curl -sk -o /dev/null --max-time 2 "$url/healthz"; then break; fi
	sleep 0.1
done
curl -sk -o /dev/null --max-time 2 "$url/healthz" || { cat "$tmp/caddy.log" >&2; echo "caddy did not start" >&2; exit 1; }

fail=0

# 1. Retry-After on the slow zone: 6 per minute, burst 1.
code1=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "$url/verification_key")
hdrs=$(curl -sk -D - -o /dev/null --max-time 5 "$url/verification_key")
code2=$(printf '%s' "$hdrs" | awk 'NR==1 {print $2}')
retry=$(printf '%s' "$hdrs" | tr -d '\r' | awk -F': ' 'tolower($1)=="retry-after" {print $2}')
want=$((60 / SLOW_EVENTS))
echo "slow zone: first $code1, second $code2 with Retry-After: $retry (want $((want - 1))..$want)"
if [ "$code1" != 200 ] || [ "$code2" != 429 ] || [ -z "$retry" ] || [ "$retry" -gt "$want" ] || [ "$retry" -lt $((want - 1)) ]; then
	echo "FAIL: Retry-After" >&2
	fail=1
else
	sleep "$retry"
	code3=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "$url/verification_key")
	echo "slow zone: after waiting Retry-After ($retry s): $code3"
	[ "$code3" = 200 ] || { echo "FAIL: not admitted after Retry-After" >&2; fail=1; }
fi

# 2. Load on the fast zone. The bucket starts full (BURST) and refills at
# RATE per second, so DURATION seconds admit RATE*DURATION+BURST at most.
# Wait for the bucket to refill after the curl above.
sleep 1
h2load --duration="$DURATION" --warm-up-time=0 -c "$CONNS" -m 8 "$url/.well-known/mimi/ds-domain" >"$tmp/h2load.out" 2>&1 &
h2load_pid=$!
# 3. Retry-After of the fast zone, sampled while the load keeps the bucket
# empty: 1 s (1/RATE rounded up to whole seconds).
# A token refilled during a pause of the load generator may admit one
# sample, so up to 5 are taken and the first 429 is checked.
sleep 2
sample=
for _ in 1 2 3 4 5; do
	sample=$(curl -sk -D - -o /dev/null --max-time 5 "$url/.well-known/mimi/ds-domain" |
		tr -d '\r' | awk -F': ' 'tolower($1)=="retry-after" {print $2}')
	[ -z "$sample" ] || break
	sleep 0.1
done
wait "$h2load_pid" || true
sed -n '/^finished in/,/^status codes/p' "$tmp/h2load.out"
ok=$(awk '/^status codes:/ {print $3}' "$tmp/h2load.out")
# h2load prints 4xx as its fourth status class: "N 2xx, N 3xx, N 4xx, N 5xx".
limited=$(awk '/^status codes:/ {for (i = 1; i <= NF; i++) if ($(i) ~ /^4xx/) print $(i-1)}' "$tmp/h2load.out")
secs=$(awk '/^finished in/ {gsub("s,", "", $3); print $3}' "$tmp/h2load.out")
expected=$(awk -v r="$RATE" -v d="$secs" -v b="$BURST" 'BEGIN {printf "%.0f", r * d + b}')
# The sustained rate: admitted events beyond the initial burst, per second.
rate=$(awk -v n="$ok" -v d="$secs" -v b="$BURST" 'BEGIN {printf "%.1f", (n - b) / d}')
dev=$(awk -v n="$ok" -v e="$expected" 'BEGIN {printf "%.2f", 100 * (n - e) / e}')
echo "fast zone: configured $RATE/s burst $BURST over ${secs}s: admitted $ok (expected $expected, ${dev}%), sustained $rate/s, 429s $limited"
if awk -v d="$dev" 'BEGIN {exit !(d > 5 || d < -5)}'; then
	echo "FAIL: admitted count is more than 5% off the configured rate" >&2
	fail=1
fi
if [ "${limited:-0}" -eq 0 ]; then
	echo "FAIL: no 429 under load" >&2
	fail=1
fi

want_fast=$(awk -v r="$RATE" 'BEGIN {s = int(1 / r); if (s < 1 / r) s++; if (s < 1) s = 1; print s}')
echo "fast zone: Retry-After on a 429 during the load: ${sample:-none} (want $want_fast)"
[ "$sample" = "$want_fast" ] || { echo "FAIL: fast-zone Retry-After" >&2; fail=1; }

[ $fail = 0 ] && echo PASS || echo FAIL
exit $fail
