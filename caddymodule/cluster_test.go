package caddymodule

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// cluster is provider a.localhost run by two gateways on one PostgreSQL
// database, each with its own data directory, port and sender, and a
// peer provider b.localhost (SQLite) that resolves a.localhost to the
// first gateway.
type cluster struct {
	a   [2]*peerSite
	b   *peerSite
	dsn string
}

// newCluster provisions and serves the cluster's three gateways, each on
// its own loopback port with a certificate for both names.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	t.Setenv("MIMI_TEST_KEY_SECRET", base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)))
	c := &cluster{dsn: pgtest.NewDB(t)}
	cert, rootFile := peerCert(t, "mimi test cluster")
	ports := freePorts(t, 3)
	attachRoot := t.TempDir()
	site := func(name, port, peer, peerPort string, st *StoreConfig, secret string) *peerSite {
		p, _ := strconv.Atoi(peerPort)
		dsPort := port
		if name == "a.localhost" {
			dsPort = ports[0] // both gateways publish the first as the DS
		}
		g := &Gateway{Providers: []string{name}, DSDomain: name + ":" + dsPort, Store: st, KeySecret: secret,
			Federation: &Federation{AllowPrivateAddresses: true, AllowedPorts: []int{p}, Timeout: peerTimeout,
				Resolve: map[string]string{peer: "127.0.0.1:" + peerPort}, RootCAFiles: []string{rootFile}}}
		if st != nil && st.Backend == storePostgres {
			// The gateways on one database keep attachments under one root.
			g.Attachments = &Attachments{Storage: json.RawMessage(`{"backend":"local","root":` + strconv.Quote(attachRoot) + `}`)}
		}
		s := &peerSite{g: provisioned(t, g), addr: "127.0.0.1:" + port, cert: cert}
		s.start(t)
		t.Cleanup(s.stop)
		return s
	}
	for i := range c.a {
		c.a[i] = site("a.localhost", ports[i], "b.localhost", ports[2],
			&StoreConfig{Backend: storePostgres, DSN: c.dsn, MaxConns: 4}, "{env.MIMI_TEST_KEY_SECRET}")
	}
	c.b = site("b.localhost", ports[2], "a.localhost", ports[0], nil, "")
	return c
}

// leaseHolderOf answers the gateway of the cluster holding destination's
// drain lease at the time, or -1 for none.
func (c *cluster) leaseHolderOf(t *testing.T, destination string) int {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), c.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var holder string
	err = conn.QueryRow(t.Context(), `SELECT holder FROM leases WHERE name = $1 AND expires_ms > $2`,
		store.OutboxLeaseName(destination), time.Now().UnixMilli()).Scan(&holder)
	if err == pgx.ErrNoRows {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range c.a {
		if rs := runningSenderOf(s.g.DataDir); rs != nil && rs.sender.Holder == holder {
			return i
		}
	}
	t.Fatalf("lease holder %q is none of the cluster's senders", holder)
	return -1
}

// runningSenderOf is the running sender of a data directory, or nil.
func runningSenderOf(dataDir string) *runningSender {
	var out *runningSender
	senderPool.Range(func(key, value any) bool {
		if key == dataDir {
			out, _ = value.(*runningSender)
			return false
		}
		return true
	})
	return out
}

// kill stops gateway i of the cluster as kill -9 would, as far as the
// others can tell: its database connections close first, so its sender
// neither removes what it sent nor frees its drain lease, then its sender
// and server stop.
func (c *cluster) kill(t *testing.T, i int) {
	t.Helper()
	s := c.a[i]
	if err := s.g.svc.Store().Close(); err != nil {
		t.Fatal(err)
	}
	if rs := runningSenderOf(s.g.DataDir); rs != nil {
		rs.cancel()
		<-rs.done
	}
	s.stop()
}

// TestClusterOutbox runs a group hosted on provider a.localhost, served by
// two gateways on one PostgreSQL database, with a member on peer
// b.localhost. The group's messages are accepted alternately by both
// gateways while b is slow; in the middle of the stream the gateway
// holding b's drain lease is killed (its lease is not freed), the other
// takes the lease over when it expires, and more messages are accepted by
// the survivor. b's member gets every message exactly once, in order.
func TestClusterOutbox(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and three gateways")
	}
	old := outboxLeaseTTL
	outboxLeaseTTL = 2 * time.Second
	t.Cleanup(func() { outboxLeaseTTL = old })
	c := newCluster(t)
	alice, bob := newPeerMember(t, c.a[0], "alice"), newPeerMember(t, c.b, "bob")
	gid := []byte("a group of a cluster")
	createGroupAt(t, c.a[0], alice, gid)
	addAt(t, c.a[1], alice, false, bob)
	if got := waitQueue(t, c.b, bob.uri, 1); len(got) != 1 {
		t.Fatalf("bob's queue at b holds %d messages, want the Welcome", len(got))
	}
	welcome, err := mls.DecodeMLSMessage(waitQueue(t, c.b, bob.uri, 1)[0].Message)
	if err != nil {
		t.Fatal(err)
	}
	if bob.m, err = mls.JoinFromWelcome(welcome.Welcome, mls.WelcomeOptions{KeyPackage: bob.kp, InitKey: bob.initKey,
		LeafKey: bob.leafKey, Signer: bob.signer}); err != nil {
		t.Fatal(err)
	}

	const drained, before, after = 20, 30, 10
	send := func(site *peerSite, i int) {
		app, err := alice.m.Protect(fmt.Appendf(nil, "message %d", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		groupOp(t, site, alice, moh.RequestBody{Type: moh.SendMessage, Message: *app})
	}
	c.b.delay.Store(int64(60 * time.Millisecond)) // a slow peer: the stream takes a while

	// Both gateways accept, both senders drain: each message is sent
	// once on the wire, not only queued once at b.
	for i := range drained {
		send(c.a[i%2], i)
	}
	waitQueue(t, c.b, bob.uri, 1+drained)
	waitOutboxEmpty(t, c.a[0], "b.localhost")
	if n := c.b.deliveries.Load(); n != 1+drained {
		t.Fatalf("b received %d deliver_message requests for %d messages: the gateways sent some twice", n, 1+drained)
	}
	senders := 0
	for _, s := range c.a {
		if runningSenderOf(s.g.DataDir).sender.Stats().Delivered > 0 {
			senders++
		}
	}
	t.Logf("%d of 2 senders delivered some of the first %d messages", senders, 1+drained)

	for i := drained; i < drained+before; i++ {
		send(c.a[i%2], i)
	}
	// Mid-stream, kill the gateway that holds b's lease.
	waitQueue(t, c.b, bob.uri, 1+drained+before/3)
	victim := -1
	for deadline := time.Now().Add(30 * time.Second); victim < 0 && time.Now().Before(deadline); {
		victim = c.leaseHolderOf(t, "b.localhost")
		if victim < 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if victim < 0 {
		t.Fatal("no gateway holds b's drain lease while its stream is delivered")
	}
	delivered := len(waitQueue(t, c.b, bob.uri, 0))
	c.kill(t, victim)
	survivor := c.a[1-victim]
	t.Logf("killed gateway %d with %d of %d messages at b", victim, delivered, 1+drained+before)
	total := 1 + drained + before + after
	for i := drained + before; i < total-1; i++ {
		send(survivor, i)
	}
	waitQueue(t, c.b, bob.uri, total)
	waitOutboxEmpty(t, survivor, "b.localhost")
	time.Sleep(200 * time.Millisecond) // a duplicate would be queued by now
	got := waitQueue(t, c.b, bob.uri, 0)
	if len(got) != total {
		t.Fatalf("bob's queue at b holds %d messages, want each of the %d once", len(got), total)
	}
	// What the killed gateway sent but did not remove was sent again by
	// the survivor, and dropped by b as a duplicate.
	t.Logf("b received %d deliver_message requests for %d messages", c.b.deliveries.Load(), total)
	for i, q := range got[1:] {
		msg, err := mls.DecodeMLSMessage(q.Message)
		if err != nil {
			t.Fatal(err)
		}
		if _, plain, err := bob.m.Unprotect(msg); err != nil || string(plain) != fmt.Sprintf("message %d", i) {
			t.Fatalf("queued message %d reads %q, %v: out of order or damaged", i, plain, err)
		}
	}
}

// postOp posts a DSRequest signed by c (as its leaf) to site's
// /group_operation and returns the HTTP status and the answer.
func postOp(site *peerSite, c *peerMember, body moh.RequestBody) (int, moh.DSResponse, error) {
	var r moh.DSResponse
	req, err := ds.SignRequest(peerSuite, c.signer, body, ds.ClientSignature(c.m.LeafIndex(), time.Now()))
	if err != nil {
		return 0, r, err
	}
	_, port, _ := net.SplitHostPort(site.addr)
	resp, err := site.client().Post("https://"+site.g.Providers[0]+":"+port+"/group_operation", "application/octet-stream", bytes.NewReader(req))
	if err != nil {
		return 0, r, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, r, err
	}
	if err := wire.Unmarshal(raw, &r, "DSResponse"); err != nil {
		return resp.StatusCode, r, err
	}
	return resp.StatusCode, r, nil
}

// TestClusterRaces races work that must happen once across the two
// gateways of one provider on one PostgreSQL database: 100 commits for one
// epoch, posted at once, half to each gateway's /group_operation (exactly
// one is accepted); and 50 claims of one client's KeyPackages, half
// through each gateway's store (each single-use package is handed out
// once, then the last-resort one).
func TestClusterRaces(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and three gateways")
	}
	c := newCluster(t)

	t.Run("Commits", func(t *testing.T) {
		alice := newPeerMember(t, c.a[0], "alice")
		createGroupAt(t, c.a[0], alice, []byte("a raced group"))
		const rivals = 100
		bodies := make([]moh.RequestBody, rivals)
		for i := range bodies {
			res, err := alice.m.Commit(nil, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			pgi := res.GroupInfo.GroupInfo
			bodies[i] = moh.RequestBody{Type: moh.UpdateClient, GroupUpdate: moh.MLSGroupUpdate{Commit: *res.Commit,
				PartialGroupInfo: moh.PartialGroupInfo{Extensions: pgi.Extensions, Signature: pgi.Signature}}}
		}
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			won     int
			refused = map[string]int{}
			start   = make(chan struct{})
		)
		for i, body := range bodies {
			wg.Go(func() {
				<-start
				status, r, err := postOp(c.a[i%2], alice, body)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					t.Errorf("commit %d: %v", i, err)
				case status == http.StatusOK && r.Type != moh.ResponseError:
					won++
				default:
					refused[fmt.Sprintf("%d %s", status, r.Error.Code)]++
				}
			})
		}
		close(start)
		wg.Wait()
		if won != 1 {
			t.Fatalf("%d of %d racing commits for one epoch were accepted, want 1 (refused: %v)", won, rivals, refused)
		}
		for answer := range refused {
			if strings.HasPrefix(answer, "5") {
				t.Fatalf("racing commits refused with %v, want conflicts, not server errors", refused)
			}
		}
		t.Logf("the %d losers were answered %v", rivals-1, refused)
	})

	t.Run("KeyPackages", func(t *testing.T) {
		const client, single, claims = "mimi://a.localhost/d/carol/phone", 40, 50
		exp := time.Now().Add(24 * time.Hour)
		kps := []store.KeyPackage{{Client: client, Suite: 1, Ref: []byte("last resort"), KeyPackage: []byte("kp last resort"),
			NotAfter: exp, LastResort: true}}
		for i := range single {
			kps = append(kps, store.KeyPackage{Client: client, Suite: 1, Ref: fmt.Appendf(nil, "ref %d", i),
				KeyPackage: fmt.Appendf(nil, "kp %d", i), NotAfter: exp})
		}
		if err := c.a[0].g.svc.Store().PublishKeyPackages(t.Context(), client, kps, store.KeyPackageLimits{}); err != nil {
			t.Fatal(err)
		}
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			got   = map[string]int{}
			start = make(chan struct{})
		)
		for i := range claims {
			wg.Go(func() {
				<-start
				kp, err := c.a[i%2].g.svc.Store().ClaimKeyPackage(t.Context(), client, 0)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Errorf("claim %d: %v", i, err)
					return
				}
				got[string(kp.Ref)]++
			})
		}
		close(start)
		wg.Wait()
		if got["last resort"] != claims-single {
			t.Fatalf("the last-resort package was handed out %d times, want %d", got["last resort"], claims-single)
		}
		for i := range single {
			if n := got[fmt.Sprintf("ref %d", i)]; n != 1 {
				t.Fatalf("single-use package %d was handed out %d times, want once", i, n)
			}
		}
	})
}

// TestClusterHubForgets checks that a hub record deleted through one
// gateway of a cluster stops the other gateway from using the hub it
// cached, without waiting for ds.HubCacheTTL: b.localhost, recorded as
// the hub of a group, delivers a message to the second gateway, which
// caches b; the record is deleted through the first gateway's store
// (ForgetGroupHub, as DELETE /mimi/hubs runs it in that gateway's
// process, whose own caches it forgets directly); the second gateway,
// told by PostgreSQL (store.HubForgetWatcher), refuses b's next message
// for the group as one for a group it does not know.
func TestClusterHubForgets(t *testing.T) {
	c := newCluster(t)
	gid := []byte("a group whose hub record is deleted")
	if err := c.a[0].g.svc.Store().RecordGroupHub(t.Context(), gid, "b.localhost"); err != nil {
		t.Fatal(err)
	}
	msg := &mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: &mls.PrivateMessage{
		GroupID: gid, Epoch: 1, ContentType: mls.ContentApplication, EncryptedSenderData: []byte{1}, Ciphertext: []byte{2}}}
	deliver := func() (int, moh.Code) {
		t.Helper()
		rid := make([]byte, 16)
		rand.Read(rid)
		st, raw := postProvider(t, c.a[1], "/deliver_message",
			signedDelivery(t, c.b, c.a[1], rid, gid, msg, "mimi://a.localhost/d/bob/phone"))
		return st, moh.AnswerCode(raw)
	}
	if st, code := deliver(); st != http.StatusOK {
		t.Fatalf("b's message at the second gateway: %d %s, want 200", st, code)
	}
	if _, err := c.a[0].g.svc.Store().ForgetGroupHub(t.Context(), gid); err != nil {
		t.Fatal(err)
	}
	// The notification arrives soon after the deletion commits; well
	// before ds.HubCacheTTL on any machine.
	deadline := time.Now().Add(ds.HubCacheTTL / 2)
	for {
		st, code := deliver()
		if st == http.StatusNotFound && code == moh.CodeNotFound {
			break
		}
		if st != http.StatusOK || time.Now().After(deadline) {
			t.Fatalf("b's message at the second gateway after the deletion: %d %s, want 404 not_found", st, code)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
