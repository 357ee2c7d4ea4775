package ds

import (
	"bufio"
	"bytes"
	"crypto"
	"fmt"
	"github.com/caddy-mimi/caddy-mimi/internal/cputime"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// The commit benchmarks of a long-lived group: every parent node set (a
// group whose members have each committed once, mls.NewPopulatedGroup), so
// that a commit carries O(log n) path ciphertexts, as in a group that has
// lived a while. A freshly mass-added group (BenchmarkUpdateClient) carries
// O(n) instead, which MLS requires while the tree is blank.

// populatedCommitters is how many members of a benchmark group commit, in
// turn: each commit is built by the member whose turn it is, and the
// others follow it, so every commit changes another path.
const populatedCommitters = 4

// populated is a populated group hosted by a Service over a real
// sqlitestore file, with the members that commit in it.
type populated struct {
	svc     *Service
	st      *sqlitestore.Store
	issuer  *binding.Issuer
	members []*mls.Member
	signers []crypto.Signer
	turn    int
}

// newPopulated builds a populated group of n members whose committers'
// leaves carry client bindings of the service's provider (checked on
// every commit), stores it, and reopens the store, so that the measured
// commits start from a store in its steady state: the bulk write of the
// set-up checkpointed out of the WAL, and the group loaded once.
func newPopulated(b *testing.B, n int) *populated {
	b.Helper()
	dir := b.TempDir()
	ring, err := provider.OpenKeyRing(b.Context(), filepath.Join(dir, "keys"), provider.KeyRingOptions{}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	p := &populated{issuer: &binding.Issuer{Domains: []string{testProvider}, Keys: ring}}
	cs := mls.X25519AES128GCMSHA256Ed25519
	leaves := make([]*mls.LeafNode, n)
	signers := make([]crypto.Signer, n)
	var committers []uint32
	for k := range min(populatedCommitters, n) {
		committers = append(committers, uint32(k*(n-1)/max(populatedCommitters-1, 1)))
	}
	for i := range n {
		var edit func(*mls.LeafNode, []byte)
		if slices.Contains(committers, uint32(i)) {
			edit = p.bind(b, fmt.Sprint("user", i))
		}
		c := newKeyPackageClient(b, cs, fmt.Sprint("user", i), moh.ClientURI(testProvider, fmt.Sprint("user", i), "phone"), edit)
		leaf := c.kp.LeafNode
		leaves[i], signers[i] = &leaf, c.signer
	}
	gid := fmt.Appendf(nil, "populated %d", n)
	g, ms, err := mls.NewPopulatedGroup(mls.PopulatedGroupOptions{CipherSuite: cs, GroupID: gid,
		Leaves: leaves, Signers: signers, Members: committers})
	if err != nil {
		b.Fatal(err)
	}
	p.members = ms
	for _, j := range committers {
		p.signers = append(p.signers, signers[j])
	}
	gi, err := ms[0].GroupInfo()
	if err != nil {
		b.Fatal(err)
	}
	withoutTree(gi)
	if err := gi.Sign(signers[committers[0]]); err != nil {
		b.Fatal(err)
	}
	giEnc, err := wire.Marshal(&mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "mimi.db")
	st, err := sqlitestore.Open(b.Context(), path)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.CreateGroup(b.Context(), store.GroupCreation{Hub: testProvider, State: g, GroupInfo: giEnc,
		Members: memberURIs(g)}); err != nil {
		b.Fatal(err)
	}
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	if p.st, err = sqlitestore.Open(b.Context(), path); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.st.Close() })
	p.svc = &Service{Groups: StoreGroups{p.st}, Joiners: StoreJoiners{p.st}, Seen: p.st, Store: p.st,
		Providers: []string{testProvider}, Bindings: &binding.Checker{Domains: []string{testProvider}, Local: ring}}
	if _, err := p.st.LoadGroup(b.Context(), gid); err != nil {
		b.Fatal(err)
	}
	return p
}

// bind returns a leaf edit that attaches a client binding of uri's
// provider for the leaf's signature key.
func (p *populated) bind(b *testing.B, user string) func(*mls.LeafNode, []byte) {
	uri := moh.ClientURI(testProvider, user, "phone")
	return func(leaf *mls.LeafNode, pub []byte) {
		leaf.Capabilities.Extensions = []mls.ExtensionType{binding.ExtensionType}
		cb, err := p.issuer.Issue([]byte(uri), pub, time.Now().Add(24*time.Hour))
		if err != nil {
			b.Fatal(err)
		}
		if err := binding.Attach(leaf, cb); err != nil {
			b.Fatal(err)
		}
	}
}

// request has the member whose turn it is commit props (none: a path-only
// update) and returns the signed request of type typ carrying it, and the
// commit's result. The GroupInfo and Welcome leave the ratchet tree out,
// as MIMI clients make them (the DS serves the tree).
func (p *populated) request(b *testing.B, typ moh.RequestType, props []*mls.Proposal) ([]byte, *mls.CommitResult) {
	b.Helper()
	c := p.turn % len(p.members)
	m := p.members[c]
	res, err := m.CommitWith(mls.CommitOptions{ByValue: props, OmitRatchetTree: true})
	if err != nil {
		b.Fatal(err)
	}
	body := moh.RequestBody{Type: typ, GroupUpdate: update(res)}
	if res.Welcome != nil {
		body.WelcomePackages = []moh.WelcomePackage{{Welcome: *res.Welcome}}
	}
	req, err := SignRequest(mls.X25519AES128GCMSHA256Ed25519, p.signers[c], body, ClientSignature(m.LeafIndex(), time.Now()))
	if err != nil {
		b.Fatal(err)
	}
	return req, res
}

// accepted moves every committer to the epoch of an accepted commit: the
// committer adopts its result, the others follow the commit as received.
func (p *populated) accepted(b *testing.B, res *mls.CommitResult) {
	b.Helper()
	c := p.turn % len(p.members)
	enc, err := wire.Marshal(res.Commit)
	if err != nil {
		b.Fatal(err)
	}
	for k, m := range p.members {
		if k == c {
			p.members[k] = res.Next
			continue
		}
		msg, err := mls.DecodeMLSMessage(enc)
		if err != nil {
			b.Fatal(err)
		}
		if p.members[k], err = m.ApplyCommit(msg, nil); err != nil {
			b.Fatalf("member %d follows the commit: %v", k, err)
		}
	}
	p.turn++
}

// commitStats collects the per-commit measures of a benchmark.
type commitStats struct {
	took             []time.Duration
	rowBytes, wchars uint64
	wcharsOK         bool
	cpu              time.Duration
	cpuOK            bool
}

// measure runs the Delivery Service on one signed request, timed, and
// records its latency and what it wrote: the bytes of the rows the store
// wrote (sqlitestore Stats.GroupBytes) and the bytes the process handed
// to write(2) meanwhile (/proc/self/io wchar: the WAL frames with their
// headers, and any checkpoint the commit triggered; Linux only), which is
// the store's alone, nothing else writing during the benchmark. It also
// records the CPU time the process used meanwhile (user and system), which
// the fsync's wait does not count: the measure of the work that could
// grow with the group, less noisy than the latency on a shared disk.
func (cs *commitStats) measure(b *testing.B, p *populated, what string, req []byte) {
	b.Helper()
	// The clients' garbage is collected before, not while the DS is
	// measured.
	runtime.GC()
	rows := p.st.Stats().GroupBytes
	w0, ok0 := wchar()
	c0, cok0 := cputime.Process()
	b.StartTimer()
	start := time.Now()
	r, err := p.svc.Authenticate(b.Context(), req)
	if err == nil {
		_, err = p.svc.Handle(b.Context(), r)
	}
	took := time.Since(start)
	b.StopTimer()
	c1, cok1 := cputime.Process()
	if err != nil {
		b.Fatalf("%s: %v", what, err)
	}
	w1, ok1 := wchar()
	cs.cpu += c1 - c0
	cs.cpuOK = cok0 && cok1
	cs.took = append(cs.took, took)
	cs.rowBytes += p.st.Stats().GroupBytes - rows
	cs.wcharsOK = ok0 && ok1
	cs.wchars += w1 - w0
}

// report reports the latency percentiles and bytes per commit.
func (cs *commitStats) report(b *testing.B) {
	if len(cs.took) == 0 {
		return
	}
	took := slices.Clone(cs.took)
	slices.Sort(took)
	n := float64(len(took))
	b.ReportMetric(float64(took[len(took)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(took[(len(took)*99)/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(cs.rowBytes)/n, "row-bytes/commit")
	if cs.cpuOK {
		b.ReportMetric(float64(cs.cpu.Microseconds())/n, "cpu-µs/commit")
	}
	if cs.wcharsOK {
		b.ReportMetric(float64(cs.wchars)/n, "write-bytes/commit")
	}
}

// wchar reads the bytes this process has handed to write(2) so far.
func wchar() (uint64, bool) {
	f, err := os.Open("/proc/self/io")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("wchar: ")); ok {
			n, err := strconv.ParseUint(string(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// BenchmarkPopulatedCommit measures the Delivery Service's handling of
// commits (authentication, RFC 9420 validation, DS rules, the GroupInfo,
// the client binding of the committer's new leaf, the conditional write
// to a real sqlitestore file with its fsync) in populated groups of 100,
// 1,000 and 10,000 members, a stream of commits on one group, each built
// by the member whose turn it is:
//
//   - update_client: a path-only commit, one per op;
//   - add_remove: add_users of a new client (with its Welcome), then
//     remove_users of it by the next member; two commits per op, the
//     metrics per commit.
//
// Only the DS's work is timed, not the clients' commits or their
// following. Besides ns/op and allocations it reports the p50 and p99
// latency, the process's CPU time per commit (Unix), the bytes of the rows
// written per commit and the bytes written to the database files per
// commit (Linux).
func BenchmarkPopulatedCommit(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("update_client/members=%d", n), func(b *testing.B) {
			if n > 1000 && testing.Short() {
				b.Skip("10,000 members in -short mode")
			}
			p := newPopulated(b, n)
			var stats commitStats
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				req, res := p.request(b, moh.UpdateClient, nil)
				stats.measure(b, p, "update_client", req)
				p.accepted(b, res)
				b.StartTimer()
			}
			stats.report(b)
		})
		b.Run(fmt.Sprintf("add_remove/members=%d", n), func(b *testing.B) {
			if n > 1000 && testing.Short() {
				b.Skip("10,000 members in -short mode")
			}
			p := newPopulated(b, n)
			var stats commitStats
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				user := fmt.Sprint("joiner", i)
				j := newKeyPackageClient(b, mls.X25519AES128GCMSHA256Ed25519, user,
					moh.ClientURI(testProvider, user, "phone"), p.bind(b, user))
				req, res := p.request(b, moh.AddUsers, []*mls.Proposal{{Type: mls.ProposalAdd, KeyPackage: j.kp}})
				stats.measure(b, p, "add_users", req)
				p.accepted(b, res)
				leaf, ok := p.members[0].State().LeafBySignatureKey(j.pub)
				if !ok {
					b.Fatal("the joiner is not in the tree")
				}
				req, res = p.request(b, moh.RemoveUsers, []*mls.Proposal{{Type: mls.ProposalRemove, Removed: leaf}})
				stats.measure(b, p, "remove_users", req)
				p.accepted(b, res)
				b.StartTimer()
			}
			stats.report(b)
		})
	}
}
