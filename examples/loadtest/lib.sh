# Shared by writepath.sh and crash.sh (sourced, not run): builds Caddy and
# mimiload, writes the root CA, the Privacy Pass issuer key and the
# Caddyfile of the two providers into $tmp, and starts/stops Caddy.
# ratelimit.sh uses its temporary directory and cleanup only.
#
# Everything listens on 127.0.0.1 only (default_bind), on $PORT for HTTPS
# and $HTTP_PORT for the (unused) HTTP listener.

PORT=${PORT:-19443}
HTTP_PORT=${HTTP_PORT:-19080}
# CADDY: a Caddy already built with the plugin (.ci/run passes its own);
# unset, build builds ./caddy.
CADDY=${CADDY:-}

tmp=$(mktemp -d)
caddy_pid=
# backend_pid: a storage backend attachbench.sh started (mimiload attachbackend).
backend_pid=
cleanup() {
	for pid in $caddy_pid $backend_pid; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	if [ "${KEEP:-}" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# build builds Caddy (./caddy, through ./xcaddy.sh; not when $CADDY names
# one) and mimiload into $tmp.
build() {
	if [ -z "$CADDY" ]; then
		./xcaddy.sh ./caddy >&2
		CADDY=./caddy
	fi
	go build -o "$tmp/mimiload" ./examples/loadtest/mimiload
}

# configure writes the keys and the Caddyfile. a.localhost is the sender
# (no gateway with ONE_GATEWAY=1);
# b.localhost receives, fetches a's keys over loopback, runs a Privacy Pass
# issuer and requires a token on /verification_key, and answers /bare with
# a plain respond (no mimi handler) for the baseline, and /bare-answer with
# a 5-byte body and the headers of a MoH answer for the second one. $B_SITE and $B_MIMI,
# when set, are Caddyfile lines added to b.localhost's site and to its mimi
# block (attachbench.sh and attachcrash.sh use them).
configure() {
	"$tmp/mimiload" setup -dir "$tmp"
	# ONE_GATEWAY=1 (attachbench.sh): a.localhost without its gateway (only
	# its /healthz, which mimiload waits for), for the memory of one
	# gateway; the other scripts need a's.
	local A_MIMI="	mimi {
		provider a.localhost
		ds_domain a.localhost:$PORT
		data_dir $tmp/a
	}
"
	if [ "${ONE_GATEWAY:-}" = 1 ]; then A_MIMI="	respond /healthz 200
"; fi
	{
		caddy_globals
		cat <<CADDY

a.localhost:$PORT {
	tls internal {
		protocols tls1.3
	}
${A_MIMI}	respond "not mimi" 404
}

b.localhost:$PORT {
	tls internal {
		protocols tls1.3
	}
	handle /bare {
		respond 200
	}
	# The baseline answering like deliver_message's success: 5 bytes
	# and the headers of a MoH answer (mimiload's bare-answer runs).
	handle /bare-answer {
		header Content-Type application/octet-stream
		header Cache-Control no-store
		respond "mimi!" 200
	}
${B_SITE:+$B_SITE
}	mimi {
${B_MIMI:+$B_MIMI
}		provider b.localhost
		ds_domain b.localhost:$PORT
		data_dir $tmp/b
		# the send mode's recipients never fetch: room for every message
		queue_max_messages 10000000
		queue_max_bytes 64GiB
		federation {
			allow_private_addresses
			allow_ports $PORT
			resolve a.localhost 127.0.0.1:$PORT
			root_ca $tmp/root-cert.pem
		}
		issuer {
			key $tmp/pp/k2.json
		}
		privacy_pass {
			issuer_name b.localhost:$PORT
			require verification_key
			context window
			secret {file.$tmp/pp/secret}
		}
	}
	respond "not mimi" 404
}
CADDY
	} >"$tmp/Caddyfile"
}

# caddy_globals prints the Caddyfile's global options: loopback only,
# $PORT and $HTTP_PORT, Caddy's state in $tmp (or $CADDY_STORAGE), its
# internal CA issuing from the root CA of mimiload setup, 0-RTT off.
caddy_globals() {
	cat <<CADDY
{
	admin ${ADMIN:-off}
	skip_install_trust
	persist_config off
	default_bind 127.0.0.1
	http_port $HTTP_PORT
	https_port $PORT
	grace_period 1s
	storage file_system ${CADDY_STORAGE:-$tmp/storage}
	log {
		level WARN
	}
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

# caddy_env: Caddy's data and config inside $tmp. Used as a command
# prefix; env execs its command, so $! of a background run is that
# command's pid (a shell function would put a subshell in between, and
# killing it would leave Caddy running).
caddy_env=(env HOME="$tmp/home" XDG_DATA_HOME="$tmp/xdg" XDG_CONFIG_HOME="$tmp/xdg")

# port_free fails if something already listens on $PORT: Caddy listens
# with SO_REUSEPORT, so a leftover Caddy on the same port would silently
# take half of the connections.
port_free() {
	if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
		echo "something already listens on 127.0.0.1:$PORT; stop it or set PORT" >&2
		exit 1
	fi
}

# start_caddy starts Caddy in the background (log: $tmp/caddy.log).
start_caddy() {
	"${caddy_env[@]}" "${CADDY:-./caddy}" run --config "$tmp/Caddyfile" --adapter caddyfile >>"$tmp/caddy.log" 2>&1 &
	caddy_pid=$!
}

# conditions prints what else the machine is doing, for the results table.
conditions() {
	echo "# $(date -u +%FT%TZ) $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), load average $(cut -d' ' -f1-3 /proc/loadavg), $("${CADDY:-./caddy}" version | cut -d' ' -f1), $(go version | cut -d' ' -f3), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
}
