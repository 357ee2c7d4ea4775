package caddymodule

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hpke"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/caddy-mimi/caddy-mimi/internal/mlstest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// peerSite is a provisioned gateway served over TLS 1.3 on a loopback
// address that survives a restart of its server.
type peerSite struct {
	g    *Gateway
	addr string
	cert tls.Certificate
	srv  *httptest.Server
	// clientAuth is the server's ClientAuth: tls.RequestClientCert for
	// mutual TLS between providers.
	clientAuth tls.ClientAuthType
	// delay, when set, holds every request this long before the gateway
	// serves it: a slow peer.
	delay atomic.Int64
	// deliveries counts the deliver_message requests it received.
	deliveries atomic.Int64
	// intercept, when set, sees every request first and answers it
	// itself when it returns true: a peer that refuses some requests.
	intercept atomic.Pointer[func(w http.ResponseWriter, r *http.Request) bool]

	clientOnce sync.Once
	cl         *http.Client
}

// client is an HTTP/2 client of s over TLS 1.3 that trusts s's
// certificate and dials s.addr whatever the name; made once, so its
// connections are reused.
func (s *peerSite) client() *http.Client {
	s.clientOnce.Do(func() {
		pool := x509.NewCertPool()
		leafCert, _ := x509.ParseCertificate(s.cert.Certificate[0])
		pool.AddCert(leafCert)
		dialer := &net.Dialer{Timeout: 5 * time.Second}
		s.cl = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, network, s.addr)
			},
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}, ForceAttemptHTTP2: true}}
	})
	return s.cl
}

// start serves the gateway on s.addr (again).
func (s *peerSite) start(t testing.TB) {
	t.Helper()
	var ln net.Listener
	var err error
	if v, ok := heldListeners.LoadAndDelete(s.addr); ok {
		ln = v.(net.Listener) // the first start on a port of freePorts
	}
	for i := 0; ln == nil && i < 50; i++ { // the port of a server just closed may take a moment
		if ln, err = net.Listen("tcp", s.addr); err != nil {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if ln == nil {
		t.Fatal(err)
	}
	notMIMI := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.WriteHeader(http.StatusNotFound)
		return nil
	})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Duration(s.delay.Load()))
		if strings.HasSuffix(r.URL.Path, "/deliver_message") {
			s.deliveries.Add(1)
		}
		if f := s.intercept.Load(); f != nil && (*f)(w, r) {
			return
		}
		caddyhttp.NewTestReplacer(r)
		if err := s.g.ServeHTTP(w, r, notMIMI); err != nil {
			t.Errorf("ServeHTTP: %v", err)
		}
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{s.cert}, MinVersion: tls.VersionTLS13, ClientAuth: s.clientAuth}
	srv.StartTLS()
	s.srv = srv
}

// stop closes the server and every connection to it.
func (s *peerSite) stop() {
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// peerCert makes a self-signed certificate for a.localhost and
// b.localhost, named commonName, that serves as its own root, and writes
// the root to a file, whose path it returns with the certificate.
func peerCert(t testing.TB, commonName string) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: commonName},
		DNSNames: []string{"a.localhost", "b.localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	rootFile := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, rootFile
}

// heldListeners holds, by address, the listeners that freePorts opened
// and no peerSite has started on yet.
var heldListeners sync.Map // "127.0.0.1:port" -> net.Listener

// freePorts returns n free loopback ports, each held by an open listener
// until a peerSite first starts on it (or the test ends), so that another
// process cannot take it in between: the sites of a test need each
// other's ports before either serves.
func freePorts(t testing.TB, n int) []string {
	t.Helper()
	ports := make([]string, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		addr := "127.0.0.1:" + ports[i]
		heldListeners.Store(addr, ln)
		t.Cleanup(func() {
			if v, ok := heldListeners.LoadAndDelete(addr); ok {
				v.(net.Listener).Close()
			}
		})
	}
	return ports
}

// twoProviders provisions gateways for a.localhost and b.localhost, each
// on its own loopback port with a certificate for both names, each
// resolving the other to its port and trusting the certificate.
func twoProviders(t testing.TB) (a, b *peerSite) {
	t.Helper()
	return twoProvidersWith(t, nil)
}

// peerTimeout is the federation timeout of the test providers: each
// discovery and key fetch, dial and TLS handshake between them, which
// the default of 5 s would let a loaded machine under -race exceed; it
// only keeps a failing test from hanging.
const peerTimeout = caddy.Duration(30 * time.Second)

// twoProvidersWith is twoProviders, calling setup, when not nil, with
// each site once its gateway is provisioned and before it serves: what
// setup changes in the gateway is seen by every request.
func twoProvidersWith(t testing.TB, setup func(*peerSite)) (a, b *peerSite) {
	t.Helper()
	cert, rootFile := peerCert(t, "mimi test peers")
	ports := freePorts(t, 2)
	site := func(name, port, peer, peerPort string) *peerSite {
		p, _ := strconv.Atoi(peerPort)
		g := provisioned(t, &Gateway{Providers: []string{name}, DSDomain: name + ":" + port,
			Federation: &Federation{AllowPrivateAddresses: true, AllowedPorts: []int{p}, Timeout: peerTimeout,
				Resolve: map[string]string{peer: "127.0.0.1:" + peerPort}, RootCAFiles: []string{rootFile}}})
		s := &peerSite{g: g, addr: "127.0.0.1:" + port, cert: cert}
		if setup != nil {
			setup(s)
		}
		s.start(t)
		t.Cleanup(s.stop)
		return s
	}
	return site("a.localhost", ports[0], "b.localhost", ports[1]), site("b.localhost", ports[1], "a.localhost", ports[0])
}

// peerMember is an MLS client of one of the test providers, bound by its
// provider's key ring.
type peerMember struct {
	uri              string
	kp               *mls.KeyPackage
	signer           crypto.Signer
	leafKey, initKey hpke.PrivateKey
	m                *mls.Member
}

const peerSuite = mls.X25519AES128GCMSHA256Ed25519

func newPeerMember(t testing.TB, s *peerSite, user string) *peerMember {
	t.Helper()
	c, err := mlstest.NewClient(peerSuite, moh.ClientURI(s.g.Providers[0], user, "phone"),
		mlstest.Options{Issuer: &binding.Issuer{Domains: s.g.Providers, Keys: s.g.svc.Keys()}})
	if err != nil {
		t.Fatal(err)
	}
	return &peerMember{uri: c.Identity, kp: c.KeyPackage, signer: c.Signer, leafKey: c.LeafKey, initKey: c.InitKey}
}

// groupOp posts a DSRequest signed by c (as its leaf) to site's
// /group_operation over TLS 1.3 and fails unless it is accepted.
func groupOp(t testing.TB, site *peerSite, c *peerMember, body moh.RequestBody) {
	t.Helper()
	var leaf uint32
	if c.m != nil {
		leaf = c.m.LeafIndex()
	}
	req, err := ds.SignRequest(peerSuite, c.signer, body, ds.ClientSignature(leaf, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	// The DS authority: the provider's name and this site's port (two
	// sites of one provider share the name).
	_, port, _ := net.SplitHostPort(site.addr)
	resp, err := site.client().Post("https://"+site.g.Providers[0]+":"+port+"/group_operation", "application/octet-stream", bytes.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var r moh.DSResponse
	if err := wire.Unmarshal(raw, &r, "DSResponse"); err != nil || resp.StatusCode != http.StatusOK || r.Type == moh.ResponseError {
		t.Fatalf("%s: %d %s %q (%v)", body.Type, resp.StatusCode, r.Error.Code, r.Error.Message, err)
	}
}

// waitQueue polls site's store until client's queue holds n messages and
// returns them.
func waitQueue(t testing.TB, site *peerSite, client string, n int) []store.QueuedMessage {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		msgs, err := site.g.svc.Store().Fetch(t.Context(), client, 0, store.FetchLimit{Messages: store.MaxFetchMessages})
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) >= n || time.Now().After(deadline) {
			return msgs
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitOutboxEmpty polls site's outbox until nothing is pending for
// destination.
func waitOutboxEmpty(t testing.TB, site *peerSite, destination string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		pending, err := site.g.svc.Store().OutboxPending(t.Context(), destination, 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(pending) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d messages still pending for %s", len(pending), destination)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOutboxSurvivesPeerOutage runs a group hosted on a.localhost with a
// member on b.localhost, takes b down, has a accept a burst of messages
// while b is unreachable, brings b back, and checks that b's member gets
// every message in its queue exactly once and in order. b's first request
// to a tells a's sender that b is back.
func TestOutboxSurvivesPeerOutage(t *testing.T) {
	a, b := twoProviders(t)
	alice, bob := newPeerMember(t, a, "alice"), newPeerMember(t, b, "bob")
	gid := []byte("a group across an outage")
	res := hostWithPeer(t, a, b, alice, bob, gid) // before the outage
	// b has the Welcome; wait until a has also recorded its delivery, so
	// that stopping b cannot cut off the answer and leave it pending.
	waitOutboxEmpty(t, a, "b.localhost")

	// b goes down; a accepts a burst, which waits in its outbox.
	b.stop()
	const burst = 20
	for i := range burst {
		app, err := alice.m.Protect([]byte(fmt.Sprintf("message %d", i)), nil)
		if err != nil {
			t.Fatal(err)
		}
		groupOp(t, a, alice, moh.RequestBody{Type: moh.SendMessage, Message: *app})
	}
	pending, err := a.g.svc.Store().OutboxPending(t.Context(), "b.localhost", 0, store.MaxOutboxList)
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != burst {
		t.Fatalf("a's outbox holds %d messages for b while b is down, want %d", len(pending), burst)
	}
	// The operator sees the backlog, in the admin API and the metrics.
	rec := httptest.NewRecorder()
	if err := (adminOutbox{}).list(rec, httptest.NewRequest(http.MethodGet, "/mimi/outbox", nil)); err != nil {
		t.Fatal(err)
	}
	var view map[string][]outboxView
	if err := json.Unmarshal(rec.Body.Bytes(), &view); err != nil {
		t.Fatal(err)
	}
	if v := view[a.g.DataDir]; len(v) != 1 || v[0].Destination != "b.localhost" || v[0].Messages != burst || v[0].Oldest.IsZero() {
		t.Fatalf("admin view of a's outbox: %+v", view[a.g.DataDir])
	}
	for dest, want := range map[string]int{"b.localhost": http.StatusNoContent, "not a domain": http.StatusBadRequest} {
		rec := httptest.NewRecorder()
		err := (adminOutbox{}).retry(rec, httptest.NewRequest(http.MethodPost, "/mimi/outbox/retry?destination="+url.QueryEscape(dest), nil))
		var apiErr caddy.APIError
		if got := rec.Code; err != nil && errors.As(err, &apiErr) {
			got = apiErr.HTTPStatus
			if got != want {
				t.Fatalf("retry of %q: %d, want %d", dest, got, want)
			}
		} else if err != nil || got != want {
			t.Fatalf("retry of %q: %d %v, want %d", dest, got, err, want)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(outboxStats{})
	if n := gaugeOf(t, reg, "caddy_mimi_outbox_messages", a.g.DataDir, "b.localhost"); n != burst {
		t.Fatalf("caddy_mimi_outbox_messages for b = %v, want %d", n, burst)
	}

	// b comes back and talks to a: a's sender resumes at once.
	b.start(t)
	pc := &provider.Client{Sender: "b.localhost", Keys: b.g.svc.Keys(), Fetcher: b.g.svc.Fetcher()}
	payload, err := wire.Marshal(&moh.QueueingServiceRequest{GroupID: []byte("no such group"),
		ClientIDs: [][]byte{[]byte(alice.uri)}, Message: *res.Commit})
	if err != nil {
		t.Fatal(err)
	}
	if ans, err := pc.Send(t.Context(), "a.localhost", moh.DeliverMessage, payload); err != nil || ans.Status != http.StatusNotFound {
		t.Fatalf("b's request to a: %v, %v", ans, err)
	}
	got := waitQueue(t, b, bob.uri, 1+burst)
	if len(got) != 1+burst {
		t.Fatalf("bob's queue at b holds %d messages after the outage, want %d", len(got), 1+burst)
	}
	welcome, err := mls.DecodeMLSMessage(got[0].Message)
	if err != nil {
		t.Fatal(err)
	}
	if bob.m, err = mls.JoinFromWelcome(welcome.Welcome, mls.WelcomeOptions{KeyPackage: bob.kp, InitKey: bob.initKey,
		LeafKey: bob.leafKey, Signer: bob.signer}); err != nil {
		t.Fatal(err)
	}
	for i, q := range got[1:] {
		msg, err := mls.DecodeMLSMessage(q.Message)
		if err != nil {
			t.Fatal(err)
		}
		if _, plain, err := bob.m.Unprotect(msg); err != nil || string(plain) != fmt.Sprintf("message %d", i) {
			t.Fatalf("queued message %d reads %q, %v: out of order or damaged", i, plain, err)
		}
	}
	// The outbox is empty once the answers came, and nothing arrives twice.
	deadline := time.Now().Add(30 * time.Second)
	for {
		pending, err = a.g.svc.Store().OutboxPending(t.Context(), "b.localhost", 0, store.MaxOutboxList)
		if err != nil {
			t.Fatal(err)
		}
		if len(pending) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(pending) != 0 {
		t.Fatalf("a's outbox still holds %d delivered messages", len(pending))
	}
	if again := waitQueue(t, b, bob.uri, 0); len(again) != 1+burst {
		t.Fatalf("bob's queue holds %d messages, want each of the %d once", len(again), 1+burst)
	}
	// Every delivered message's end-to-end latency is in the histogram;
	// those of the burst include the outage.
	latency := histogramOf(t, reg, "caddy_mimi_fanout_latency_seconds", a.g.DataDir, "b.localhost")
	if latency == nil || latency.GetSampleCount() < 1+burst || latency.GetSampleSum() <= 0 {
		t.Fatalf("fan-out latency histogram of a: %v, want at least %d samples", latency, 1+burst)
	}
}

// gaugeOf reads the value of metric name labelled with dataDir and
// destination from reg, or -1.
func gaugeOf(t *testing.T, reg *prometheus.Registry, name, dataDir, destination string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["data_dir"] == dataDir && labels["destination"] == destination {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// histogramOf reads the histogram name labelled with dataDir and
// destination from reg, or nil.
func histogramOf(t *testing.T, reg *prometheus.Registry, name, dataDir, destination string) *dto.Histogram {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["data_dir"] == dataDir && labels["destination"] == destination {
				return m.GetHistogram()
			}
		}
	}
	return nil
}

// createGroupAt has c create group gid on site's DS (create_group) and
// keeps its Member in c.m.
// hostWithPeer has c create group gid at its site hub and add joiner, a
// client of site peer, and waits until joiner's queue at peer holds the
// Welcome (peer then records hub as the group's hub).
func hostWithPeer(t testing.TB, hub, peer *peerSite, c, joiner *peerMember, gid []byte) *mls.CommitResult {
	t.Helper()
	createGroupAt(t, hub, c, gid)
	res := addAt(t, hub, c, false, joiner)
	if got := waitQueue(t, peer, joiner.uri, 1); len(got) != 1 {
		t.Fatalf("%s's queue at its provider holds %d messages, want the Welcome", joiner.uri, len(got))
	}
	return res
}

func createGroupAt(t testing.TB, site *peerSite, c *peerMember, gid []byte) {
	t.Helper()
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: peerSuite, GroupID: gid, Leaf: &c.kp.LeafNode,
		LeafKey: c.leafKey, Signer: c.signer})
	if err != nil {
		t.Fatal(err)
	}
	gi, err := m.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	groupOp(t, site, c, moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{GroupID: gid,
		LeafNode: c.kp.LeafNode, GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}}})
	c.m = m
}

// addAt has c add the clients of joiners' KeyPackages to its group on
// site's DS in one add_users commit, moves c.m to the new epoch and
// returns the commit's result. The Welcome carries the ratchet tree, so
// joiners can join from it alone, unless omitTree (a large group: the DS
// serves the tree, welcome_info).
func addAt(t testing.TB, site *peerSite, c *peerMember, omitTree bool, joiners ...*peerMember) *mls.CommitResult {
	t.Helper()
	props := make([]*mls.Proposal, len(joiners))
	for i, j := range joiners {
		props[i] = &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: j.kp}
	}
	res, err := c.m.CommitWith(mls.CommitOptions{ByValue: props, OmitRatchetTree: omitTree})
	if err != nil {
		t.Fatal(err)
	}
	pgi := res.GroupInfo.GroupInfo
	groupOp(t, site, c, moh.RequestBody{Type: moh.AddUsers, GroupUpdate: moh.MLSGroupUpdate{Commit: *res.Commit,
		PartialGroupInfo: moh.PartialGroupInfo{Extensions: pgi.Extensions, Signature: pgi.Signature}},
		WelcomePackages: []moh.WelcomePackage{{Welcome: *res.Welcome}}})
	c.m = res.Next
	return res
}
