// Command mimiload is a loopback load generator for the gateway's write
// path (docs/protocol.md §4 step 8 and §7): it drives the two providers
// a.localhost and b.localhost that examples/loadtest/writepath.sh and
// crash.sh start in one Caddy, over one TLS 1.3 HTTP/2 client.
//
//	mimiload setup -dir D                  write D/root-cert.pem, D/root-key.pem, D/pp/k2.json, D/pp/secret
//	mimiload bench -dir D -addr A ...      measure modes against b.localhost, each next to bare
//	mimiload crash -dir D -addr A ...      kill -9 Caddy under load, restart it, check the records
//	mimiload attachbench -dir D ...        a 1 GiB attachment up and down, next to file_server; Caddy's RSS
//	mimiload attachcrash -dir D ...        kill -9 Caddy during uploads, restart it, check the attachments
//	mimiload attachbackend -kind s3|forward -dir D -out F   attachbench.sh's S3 server or legacy backend on loopback
//
// Modes (bench -modes):
//
//   - signed: distinct connection_request requests signed by a.localhost
//     with a's key ring (read from D/a/keys), each with a fresh request_id;
//     b verifies, answers 404 not_found (the user is of a provider b does
//     not serve) and records the answer: one SQLite write per request. The requests
//     are signed ahead of the measured phase (a pool of -pool requests).
//   - retry: byte-identical copies of one signed request, sent once before
//     the measured phase: signature check and replay lookup, no write.
//   - token: GET /verification_key on b, which requires a Privacy Pass
//     type 2 token; each request carries its own fresh token, minted
//     before the measured phase with the issuer key D/pp/k2.json from the
//     challenge of b's 401. The durable double-spend record is the write.
//   - send: send_message requests (docs/protocol.md §5.4.1) of one member
//     of a group on b.localhost with -recipients other members, each a
//     fresh PrivateMessage protected and signed before the measured phase;
//     b checks the client signature and the epoch and delivers each
//     message to the recipients' queues in one durable write. The group's
//     clients carry bindings issued with b's key ring (D/b/keys).
//   - deliver: distinct deliver_message requests signed by a.localhost,
//     the hub of a group (introduced to b by a Welcome first) with
//     -recipients clients on b, each a distinct message; b verifies, checks
//     the hub and appends to the queues with the duplicate and replay
//     records in one durable write.
//   - commit: update_client commits (docs/protocol.md §5.4) through
//     /group_operation, one group per concurrent request (-c groups of one
//     committer and -recipients other members on the receiver's DS): worker
//     w sends group w's commits in order, epoch after epoch, each made
//     and signed before the measured phase (-commits per group, as a chain
//     of epochs). The DS verifies each commit, stores the group's new
//     state and delivers the commit to the other members' queues.
//   - bare: GET /bare, answered by Caddy's respond on the same site,
//     without the mimi handler. bench runs it next to every other mode.
//
// By default the sender of the signed, retry and deliver modes is
// a.localhost (keys in D/a/keys) and the receiver b.localhost (keys in
// D/b/keys), both served on -addr. -sender, -sender-keys, -receiver,
// -receiver-keys and -receiver-store (a PostgreSQL DSN: the keys of a
// cluster, sealed under $MIMI_KEY_SECRET) change them: examples/cluster's
// bench.sh sends deliver_message from b.localhost, and send_message and
// commits to a.localhost's gateways behind a load balancer, with -metrics
// listing every gateway's metrics.
//
// A run ends after -duration or when its pool is used up, whichever comes
// first. Nothing here asserts timing; a run fails (exit status 1) only on
// transport errors or statuses other than the mode's expected one.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "setup":
		err = setupCmd(os.Args[2:])
	case "bench":
		err = benchCmd(os.Args[2:])
	case "crash":
		err = crashCmd(os.Args[2:])
	case "attachbench":
		err = attachBenchCmd(os.Args[2:])
	case "attachcrash":
		err = attachCrashCmd(os.Args[2:])
	case "attachbackend":
		err = attachBackendCmd(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mimiload:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: mimiload setup|bench|crash|attachbench|attachcrash|attachbackend [flags] (mimiload <cmd> -h for flags)")
	os.Exit(2)
}
