package commitbench

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-mimi/caddy-mimi/caddymodule"
	"github.com/caddy-mimi/caddy-mimi/examples/loadtest/internal/dscommit"
	"github.com/caddy-mimi/caddy-mimi/internal/testca"
	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Ports of the benchmark's Caddy, on 127.0.0.1 only: apart from those of
// the integration tests (9443) and of the load-test scripts (19443).
const (
	httpsPort = "19643"
	httpPort  = "19680"
	provider  = "a.localhost"
)

// sizes are the group sizes of the issue, and committers how many
// members of each group commit, in turn.
var sizes = []int{100, 1000, 10000}

const committers = 4

const suite = mls.X25519AES128GCMSHA256Ed25519

// caddyfile serves provider a.localhost, which hosts the groups, and
// /bare, answered by Caddy's respond on the same site, listener, TLS and
// HTTP/2, without the mimi handler: the baseline.
const caddyfile = `{
	admin off
	skip_install_trust
	persist_config off
	default_bind 127.0.0.1
	http_port {HTTP}
	https_port {HTTPS}
	grace_period 1s
	storage file_system {DIR}/storage
	log {
		level WARN
	}
	pki {
		ca local {
			root {
				format pem_file
				cert {DIR}/root-cert.pem
				key {DIR}/root-key.pem
			}
		}
	}
	servers {
		0rtt off
	}
}

a.localhost:{HTTPS} {
	tls internal {
		protocols tls1.3
	}
	handle /bare {
		respond 200
	}
	mimi {
		provider a.localhost
		ds_domain a.localhost:{HTTPS}
		data_dir {DIR}/a
	}
	respond "not mimi" 404
}
`

// group is a populated group hosted by the benchmark's Caddy and its
// committing members.
type group struct {
	id      []byte
	members []*mls.Member
	signers []crypto.Signer
	turn    int
}

// env is the benchmark's Caddy and groups, started by the first
// benchmark of the binary and stopped when the binary ends (Caddy runs
// in-process; the groups are what it serves).
var env struct {
	client *http.Client
	groups map[int]*group
	err    error
	done   bool
}

// setUp writes the root CA, opens provider a's data directory as the
// gateway will (store and key ring), stores a populated group of each
// size there (mls.NewPopulatedGroup: every parent node set, as after each
// member committed once) whose committers' leaves carry client bindings
// of a's keys, closes it, and starts Caddy on it.
func setUp(b *testing.B) {
	b.Helper()
	if env.done {
		if env.err != nil {
			b.Fatal(env.err)
		}
		return
	}
	env.done = true
	if env.err = start(b); env.err != nil {
		b.Fatal(env.err)
	}
}

func start(b *testing.B) error {
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+httpsPort, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("something already listens on 127.0.0.1:%s", httpsPort)
	}
	dir, err := os.MkdirTemp("", "mimi-commitbench-")
	if err != nil {
		return err
	}
	// Not b.TempDir: the Caddy outlives the sub-benchmark that starts it.
	cleanups = append(cleanups, func() { os.RemoveAll(dir) })
	root, err := testca.WriteRoot(dir, "caddy-mimi commitbench root")
	if err != nil {
		return err
	}
	svc, err := service.Open(context.Background(), service.Options{DataDir: filepath.Join(dir, "a")})
	if err != nil {
		return err
	}
	issuer := &binding.Issuer{Domains: []string{provider}, Keys: svc.Keys()}
	env.groups = map[int]*group{}
	for _, n := range sizes {
		g, state, gi, err := populate(issuer, n)
		if err != nil {
			svc.Close()
			return fmt.Errorf("building the group of %d: %w", n, err)
		}
		if err := svc.Store().CreateGroup(context.Background(), store.GroupCreation{Hub: provider, State: state, GroupInfo: gi,
			Members: memberURIs(state)}); err != nil {
			svc.Close()
			return fmt.Errorf("storing the group of %d: %w", n, err)
		}
		env.groups[n] = g
	}
	if err := svc.Close(); err != nil {
		return err
	}
	cf := strings.NewReplacer("{DIR}", dir, "{HTTPS}", httpsPort, "{HTTP}", httpPort).Replace(caddyfile)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return fmt.Errorf("adapting the Caddyfile: %w", err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		return fmt.Errorf("starting Caddy: %w", err)
	}
	cleanups = append(cleanups, func() { caddy.Stop() })
	roots := x509.NewCertPool()
	roots.AddCert(root)
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	env.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, "127.0.0.1:"+httpsPort)
		},
		TLSClientConfig:   &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13},
		ForceAttemptHTTP2: true,
	}}
	// The internal CA issues the site's certificate in the background.
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, _, err := post("/bare", nil)
		if err == nil && status == http.StatusOK {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("a.localhost never answered /bare: %d, %v", status, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cleanups stop Caddy and remove the directory when the binary ends.
var cleanups []func()

func TestMain(m *testing.M) {
	code := m.Run()
	for _, f := range slices.Backward(cleanups) {
		f()
	}
	os.Exit(code)
}

// populate builds a populated group of n members and its GroupInfo
// (without the ratchet tree, as MIMI clients sign it for the DS).
func populate(issuer *binding.Issuer, n int) (*group, *mls.GroupState, []byte, error) {
	leaves := make([]*mls.LeafNode, n)
	signers := make([]crypto.Signer, n)
	var who []uint32
	for k := range committers {
		who = append(who, uint32(k*(n-1)/(committers-1)))
	}
	for i := range n {
		var err error
		if leaves[i], signers[i], err = newLeaf(issuer, fmt.Sprint("user", i), slices.Contains(who, uint32(i))); err != nil {
			return nil, nil, nil, err
		}
	}
	id := fmt.Appendf(nil, "commitbench %d", n)
	state, ms, err := mls.NewPopulatedGroup(mls.PopulatedGroupOptions{CipherSuite: suite, GroupID: id,
		Leaves: leaves, Signers: signers, Members: who})
	if err != nil {
		return nil, nil, nil, err
	}
	g := &group{id: id, members: ms}
	for _, j := range who {
		g.signers = append(g.signers, signers[j])
	}
	gi, err := ms[0].GroupInfo()
	if err != nil {
		return nil, nil, nil, err
	}
	gi.Extensions = slices.DeleteFunc(gi.Extensions, func(e mls.Extension) bool { return e.Type == mls.ExtRatchetTree })
	if err := gi.Sign(g.signers[0]); err != nil {
		return nil, nil, nil, err
	}
	enc, err := wire.Marshal(&mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
	return g, state, enc, err
}

// newLeaf makes the KeyPackage leaf of client mimi://a.localhost/d/user/phone,
// with a client binding of a's keys when bound.
func newLeaf(issuer *binding.Issuer, user string, bound bool) (*mls.LeafNode, crypto.Signer, error) {
	signer, pub, err := suite.GenerateSignatureKey()
	if err != nil {
		return nil, nil, err
	}
	ikm := make([]byte, 32)
	rand.Read(ikm)
	_, encPub, err := suite.DeriveKeyPair(ikm)
	if err != nil {
		return nil, nil, err
	}
	uri := moh.ClientURI(provider, user, "phone")
	leaf := &mls.LeafNode{EncryptionKey: encPub, SignatureKey: pub,
		Credential: mls.Credential{Type: mls.CredentialBasic, Identity: []byte(uri)},
		Capabilities: mls.Capabilities{Versions: []mls.ProtocolVersion{mls.MLS10}, CipherSuites: []mls.CipherSuite{suite},
			Credentials: []mls.CredentialType{mls.CredentialBasic}, Extensions: []mls.ExtensionType{binding.ExtensionType}},
		Source: mls.SourceKeyPackage, Lifetime: mls.Lifetime{NotBefore: uint64(time.Now().Add(-time.Hour).Unix()),
			NotAfter: uint64(time.Now().Add(24 * time.Hour).Unix())}}
	if bound {
		cb, err := issuer.Issue([]byte(uri), pub, time.Now().Add(24*time.Hour))
		if err != nil {
			return nil, nil, err
		}
		if err := binding.Attach(leaf, cb); err != nil {
			return nil, nil, err
		}
	}
	if err := leaf.Sign(suite, signer, nil, 0); err != nil {
		return nil, nil, err
	}
	return leaf, signer, nil
}

// next has the member whose turn it is build an update_client commit and
// returns the signed request and the commit's result.
func (g *group) next() ([]byte, *mls.CommitResult, error) {
	c := g.turn % len(g.members)
	return dscommit.UpdateClient(g.members[c], g.signers[c], time.Now())
}

// accepted moves the committers to the epoch of an accepted commit: the
// committer adopts its result, the others follow the commit as received.
func (g *group) accepted(res *mls.CommitResult) error {
	c := g.turn % len(g.members)
	enc, err := wire.Marshal(res.Commit)
	if err != nil {
		return err
	}
	for k, m := range g.members {
		if k == c {
			g.members[k] = res.Next
			continue
		}
		msg, err := mls.DecodeMLSMessage(enc)
		if err != nil {
			return err
		}
		if g.members[k], err = m.ApplyCommit(msg, nil); err != nil {
			return fmt.Errorf("member %d follows the commit: %w", k, err)
		}
	}
	g.turn++
	return nil
}

// post sends body to path on a.localhost and reads the whole answer.
func post(path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, "https://"+provider+":"+httpsPort+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := env.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	if resp.ProtoMajor != 2 || resp.TLS == nil || resp.TLS.Version != tls.VersionTLS13 {
		return 0, nil, fmt.Errorf("answer over %s, TLS %v: not HTTP/2 over TLS 1.3", resp.Proto, resp.TLS)
	}
	return resp.StatusCode, data, nil
}

// timed sends one request and returns how long it took, from sending to
// the last byte of the answer.
func timed(path string, body []byte, want int) (time.Duration, error) {
	start := time.Now()
	status, data, err := post(path, body)
	took := time.Since(start)
	if err != nil {
		return 0, err
	}
	if status != want {
		return 0, fmt.Errorf("%s: status %d, want %d: %x", path, status, want, data)
	}
	return took, nil
}

// BenchmarkCommitThroughCaddy measures a stream of update_client commits
// on one populated group of each size, through Caddy over TLS 1.3 and
// HTTP/2, one request at a time: each commit is built by the member whose
// turn it is (not timed), sent, and must get 200; the other committers
// then follow it (not timed). Next to each commit, the same body is
// POSTed to /bare (respond 200 on the same site, timed apart), so load
// from elsewhere on the machine weighs on both alike.
//
// ns/op is the commit's round trip. It reports the commits' and the bare
// requests' p50 and p99, the ratio of the p50s, and the bytes this process
// (Caddy's store, nothing else writes files meanwhile) caused to be
// written to storage per commit (/proc/self/io write_bytes, counted when
// pages are dirtied: WAL frames and checkpoints; Linux only).
func BenchmarkCommitThroughCaddy(b *testing.B) {
	setUp(b)
	for _, n := range sizes {
		b.Run(fmt.Sprint("members=", n), func(b *testing.B) {
			g := env.groups[n]
			var commits, bares []time.Duration
			var written uint64
			ioOK := true
			for b.Loop() {
				b.StopTimer()
				req, res, err := g.next()
				if err != nil {
					b.Fatal(err)
				}
				bare, err := timed("/bare", req, http.StatusOK)
				if err != nil {
					b.Fatal(err)
				}
				w0, ok0 := writeBytes()
				b.StartTimer()
				took, err := timed("/group_operation", req, http.StatusOK)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				w1, ok1 := writeBytes()
				ioOK = ioOK && ok0 && ok1
				written += w1 - w0
				commits, bares = append(commits, took), append(bares, bare)
				if err := g.accepted(res); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			c50, c99 := percentiles(commits)
			b50, b99 := percentiles(bares)
			b.ReportMetric(float64(c50.Microseconds()), "p50-µs")
			b.ReportMetric(float64(c99.Microseconds()), "p99-µs")
			b.ReportMetric(float64(b50.Microseconds()), "bare-p50-µs")
			b.ReportMetric(float64(b99.Microseconds()), "bare-p99-µs")
			b.ReportMetric(float64(c50)/float64(b50), "p50/bare-p50")
			if ioOK {
				b.ReportMetric(float64(written)/float64(len(commits)), "disk-bytes/commit")
			}
		})
	}
}

// percentiles returns the nearest-rank p50 and p99 of ds.
func percentiles(ds []time.Duration) (p50, p99 time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := func(p int) time.Duration { return s[max((len(s)*p+99)/100-1, 0)] }
	return rank(50), rank(99)
}

// writeBytes reads the bytes this process has caused to be written to
// storage (/proc/self/io write_bytes).
func writeBytes() (uint64, bool) {
	f, err := os.Open("/proc/self/io")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("write_bytes: ")); ok {
			n, err := strconv.ParseUint(string(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// memberURIs lists the identities of g's members, distinct, in leaf
// order: every member is a client of provider, so all are local members.
func memberURIs(g *mls.GroupState) []string {
	seen := map[string]bool{}
	var out []string
	for _, i := range g.Tree().Members() {
		leaf, _ := g.Member(i)
		if id := string(leaf.Credential().Identity); !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}
