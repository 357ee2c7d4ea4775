package integration

import (
	"crypto/tls"
	"database/sql"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestRelaySlowHub checks that a follower waits for a hub that takes
// longer to store a relayed commit than a key fetch may take: b.localhost
// relays bob's update_client to the hub, a.localhost, whose database is
// busy (another connection holds its write lock) for twice b's
// federation timeout, made 1 s here. The hub stores the commit once the
// lock is released; b must pass on its ok rather than answer 503 while
// the commit is accepted, which would leave bob out of step with his
// group.
func TestRelaySlowHub(t *testing.T) {
	startCaddy(t)
	if backend.postgres {
		t.Skip("the hub's store is made busy through its SQLite file")
	}
	const fedTimeout = time.Second
	base := baseConfig()
	slow := strings.Replace(base, "\t\tmax_body 64KiB\n\t\tfederation {\n",
		"\t\tmax_body 64KiB\n\t\tfederation {\n\t\t\ttimeout "+fedTimeout.String()+"\n", 1)
	if slow == base {
		t.Fatal("b.localhost's federation block not found in the configuration")
	}
	loadConfig(t, slow, "a.localhost", "b.localhost")

	alice := newMIMIClient(t, issuerOf(t, "a.localhost"), "alice", "relay-slow", false)
	bob := newMIMIClientAt(t, issuerOf(t, "b.localhost"), "b.localhost", "bob", "relay-slow", false)
	gid := alice.hostGroupWith(t, bob)
	// b records a as the group's hub when the Welcome arrives.
	bob.joinFromQueue(t, "bob")

	// b's first relay to a discovers a and connects to it, under b's
	// federation timeout of 1 s, which a loaded machine may exceed: a
	// relayed read, sent until it is answered, leaves the discovery
	// cached and a connection open, so the relayed commit below neither
	// discovers nor dials and only its wait for the hub is tested. (A
	// failed discovery is cached for a minute: 90 s only against a hang.)
	info := moh.RequestBody{Type: moh.ExternalCommitInfo, ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: gid}}
	for i, deadline := 0, time.Now().Add(90*time.Second); ; i++ {
		// Each try signed at another second: a signature is accepted once.
		resp, raw := get(t, client(tls.VersionTLS13), http.MethodPost, "https://b.localhost:9443/external_commit_information",
			"application/octet-stream", bob.sign(t, info, -time.Duration(i%240)*time.Second))
		if resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("external_commit_information relayed to the hub for 90 s: %d %x", resp.StatusCode, raw)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The hub's database is busy for twice the follower's federation
	// timeout: its writes wait for the lock (within its busy timeout).
	// The hub's own writes (its outbox sender marking the Welcome
	// delivered, a checkpoint) may hold the lock a moment: wait for it.
	db, err := sql.Open("sqlite", "file:"+filepath.Join(env.dir, "a", "mimi.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	conn, err := db.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(t.Context(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	released := make(chan struct{})
	time.AfterFunc(2*fedTimeout, func() {
		defer close(released)
		conn.ExecContext(t.Context(), "ROLLBACK") //nolint:errcheck // the test fails below if the lock stays
		conn.Close()
	})
	t.Cleanup(func() { <-released })

	update := bob.commit(t)
	resp, raw := get(t, client(tls.VersionTLS13), http.MethodPost, "https://b.localhost:9443/group_operation",
		"application/octet-stream", bob.sign(t, groupUpdate(moh.UpdateClient, update), 0))
	var r moh.DSResponse
	if resp.StatusCode != http.StatusOK || wire.Unmarshal(raw, &r, "DSResponse") != nil || r.Type != moh.ResponseOK {
		t.Fatalf("update_client relayed to a busy hub: %d %x, want 200 ok", resp.StatusCode, raw)
	}
}
