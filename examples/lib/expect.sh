# Sourced (not run) by examples/federation/run.sh and examples/cluster/run.sh,
# from the repository root: the two helpers their scenarios show and check
# a user's commands with.

# show <command...>: prints the command as a user would type it, then runs it.
show() { printf '$ %s\n' "$*"; "$@"; }

# expect <line> <recv command...>: runs the recv command, again while it
# prints something else, until it prints <line> (fields separated by
# tabs); fails when a recv prints nothing (it waited in vain) or after
# five recvs without it. What a user receives is checked, not only shown.
expect() {
	local want=$1 out
	shift
	for _ in 1 2 3 4 5; do
		printf '$ %s\n' "$*"
		out=$("$@")
		if [ -z "$out" ]; then
			break
		fi
		printf '%s\n' "$out"
		if grep -Fxq -- "$want" <<<"$out"; then
			return 0
		fi
	done
	printf 'FAIL: %s did not receive: %s\n' "$1" "$want" >&2
	exit 1
}
