# Shared by run.sh and bench.sh (sourced, not run, from the repository
# root): provider a as a cluster of gateways, each its own Caddy with the
# mimi plugin, on one throwaway PostgreSQL, behind a Caddy reverse_proxy
# load balancer that answers for a.localhost on 127.0.0.1:$PORT_A, and
# provider b as a single gateway on SQLite. All a gateways sign as one
# provider: their keys are sealed in the database under one key_secret
# ($MIMI_KEY_SECRET).
#
# Sourcing it makes the temporary directory $tmp and the trap that stops
# everything started here and removes $tmp (KEEP=1 keeps it). Then:
#
#   build              caddy (the cluster build: CLUSTER=1 ./xcaddy.sh),
#                      mimictl, mimiload and the shared root CA in $tmp
#   start_pg           PostgreSQL on $PORT_PG, database mimi; sets $dsn
#   configure N        the Caddyfiles of a1..aN, the load balancer and b
#   start_all          starts them and waits until each answers
#   check_keys         fails unless a1..aN publish the same key set
#   stop_all           stops the gateways, the load balancer and PostgreSQL
#
# $A_SITE and $A_MIMI, when set, are Caddyfile lines added to every a
# gateway's site and to its mimi block (bench.sh uses them). Everything
# listens on 127.0.0.1; nothing is written outside $tmp (and the Go build
# cache).

PORT_A=${PORT_A:-18743}     # the load balancer: a.localhost
PORT_GW=${PORT_GW:-18751}   # a1, a2, a3 on PORT_GW, +4, +8
PORT_B=${PORT_B:-18783}     # b.localhost
PORT_PG=${PORT_PG:-18799}   # PostgreSQL

tmp=$(mktemp -d)
chmod 0755 "$tmp"
pids=()
pgpid=
cleanup() {
	# stop_all waits for PostgreSQL's shutdown: a plain kill left it
	# writing its shutdown checkpoint into pg/data while rm removed it.
	stop_all
	wait 2>/dev/null || true
	if [ "${KEEP:-}" = 1 ]; then
		echo "kept $tmp" >&2
	elif ! rm -rf "$tmp" 2>/dev/null; then
		sleep 1
		rm -rf "$tmp" || echo "could not remove $tmp" >&2
	fi
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

# build builds caddy with the cluster backends (store postgres needs
# them), mimictl and mimiload into $tmp and writes the shared root CA
# (root-cert.pem, root-key.pem).
build() {
	CLUSTER=1 ./xcaddy.sh "$tmp/caddy" >/dev/null
	go build -o "$tmp/mimictl" ./cmd/mimictl
	go build -o "$tmp/mimiload" ./examples/loadtest/mimiload
	"$tmp/mimiload" setup -dir "$tmp" >/dev/null
}

# start_pg starts a throwaway PostgreSQL cluster in $tmp/pg on
# 127.0.0.1:$PORT_PG (as the postgres user when run as root) and creates
# the database mimi; $dsn names it, $pgbin is the binaries' directory.
start_pg() {
	pgbin=$(pgbin)
	mkdir -p "$tmp/pg"
	as_pg=()
	if [ "$(id -u)" = 0 ]; then
		# PostgreSQL refuses to run as root.
		chown postgres "$tmp/pg"
		as_pg=(runuser -u postgres --)
	fi
	"${as_pg[@]}" "$pgbin/initdb" -D "$tmp/pg/data" -U postgres --auth=trust >"$tmp/pg/initdb.log" 2>&1
	"${as_pg[@]}" "$pgbin/postgres" -D "$tmp/pg/data" -c listen_addresses=127.0.0.1 -p "$PORT_PG" \
		-c unix_socket_directories="$tmp/pg" >"$tmp/pg.log" 2>&1 &
	pgpid=$!
	local up=
	for _ in $(seq 1 100); do
		"$pgbin/pg_isready" -q -h 127.0.0.1 -p "$PORT_PG" 2>/dev/null && { up=1; break; }
		sleep 0.2
	done
	if [ -z "$up" ]; then
		echo "PostgreSQL did not come up on 127.0.0.1:$PORT_PG; its log:" >&2
		tail -20 "$tmp/pg.log" >&2
		exit 1
	fi
	"$pgbin/psql" -q -h 127.0.0.1 -p "$PORT_PG" -U postgres -c 'CREATE DATABASE mimi' postgres
	dsn="postgres://postgres@127.0.0.1:$PORT_PG/mimi?sslmode=disable"
}

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

# gateway <name> <provider> <port> <store lines> <other provider> <other port> <basic_auth lines> <public port> [<site lines> [<mimi lines>]]
gateway() {
	local name=$1 p=$2 port=$3 store=$4 other=$5 oport=$6 users=$7 public=$8 site=${9:-} extra=${10:-}
	globals "$name" "$port" $((port + 2))
	cat <<CADDY

$p.localhost:$port {
	tls internal {
		protocols tls1.3
	}
${site:+$site
}	mimi {
		provider $p.localhost
		ds_domain $p.localhost:$public
		data_dir $tmp/$name/data
		$store
${extra:+$extra
}		federation {
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
gw_port() { echo $((PORT_GW + 4 * ${1#a} - 4)); }

# configure <n> writes the Caddyfiles of a1..a<n> (on $dsn), of the load
# balancer in front of them and of b; gws is the a gateways' names.
configure() {
	local n=$1 g upstreams=
	gws=()
	for i in $(seq 1 "$n"); do gws+=("a$i"); done
	local a_users="alice $(hash alice-secret)
			carol $(hash carol-secret)"
	for g in "${gws[@]}"; do
		mkdir -p "$tmp/$g"
		gateway "$g" a "$(gw_port "$g")" "store postgres $dsn
		key_secret {env.MIMI_KEY_SECRET}
		attachments {
			storage local $tmp/attachments
		}" b "$PORT_B" "$a_users" "$PORT_A" "${A_SITE:-}" "${A_MIMI:-}" >"$tmp/$g/Caddyfile"
		upstreams="$upstreams https://127.0.0.1:$(gw_port "$g")"
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
	reverse_proxy$upstreams {
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
}

declare -A pid
# start <name> <port> <host> starts the Caddy of $tmp/<name> and waits
# until https://<host>.localhost:<port> answers.
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

# start_all starts the a gateways, the load balancer and b.
start_all() {
	local g
	for g in "${gws[@]}"; do start "$g" "$(gw_port "$g")" a; done
	start lb "$PORT_A" a
	start b "$PORT_B" b
}

# check_keys fails unless every a gateway publishes the key set of a1.
check_keys() {
	local g
	for g in "${gws[@]}"; do
		curl -fsS --cacert "$tmp/root-cert.pem" --resolve "a.localhost:$(gw_port "$g"):127.0.0.1" -o "$tmp/$g.keys" \
			"https://a.localhost:$(gw_port "$g")/verification_key"
		if ! cmp -s "$tmp/a1.keys" "$tmp/$g.keys"; then
			echo "FAIL: the a gateways publish different verification keys" >&2
			exit 1
		fi
	done
}

# stop_all stops every Caddy started here, then PostgreSQL (a fast
# shutdown, waited for: its port is free again when it returns).
stop_all() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	pids=()
	if [ -n "$pgpid" ]; then
		"${as_pg[@]}" "$pgbin/pg_ctl" -D "$tmp/pg/data" -m fast -w stop >/dev/null 2>&1 || kill "$pgpid" 2>/dev/null || true
		wait "$pgpid" 2>/dev/null || true
		pgpid=
	fi
}
