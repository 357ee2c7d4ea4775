package ds

import (
	"bytes"
	"context"
	"crypto/hpke"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
)

// The harness of the group operation tests: a Service over a real
// sqlitestore on a temporary file, whose client bindings are checked with
// a real key ring of provider a.example, and clients driven by package
// mls's client side, with bindings issued by that ring.

const testProvider = "a.example"

type harness struct {
	st     *sqlitestore.Store
	svc    *Service
	ring   *provider.KeyRing
	issuer *binding.Issuer
	// db is the path of st's database file.
	db string
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	dir := t.TempDir()
	db := filepath.Join(dir, "mimi.db")
	st, err := sqlitestore.Open(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ring, err := provider.OpenKeyRing(t.Context(), filepath.Join(dir, "keys"), provider.KeyRingOptions{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{st: st, ring: ring, issuer: &binding.Issuer{Domains: []string{testProvider}, Keys: ring}, db: db}
	h.svc = &Service{Groups: StoreGroups{st}, Joiners: StoreJoiners{st}, Seen: st, Store: st, Providers: []string{"b.example", testProvider},
		Bindings: &binding.Checker{Domains: []string{testProvider}, Local: ring}, Members: new(MemberViews)}
	return h
}

// queued returns the messages queued for c since the last call, and
// acknowledges them.
func (h *harness) queued(t testing.TB, c *tclient) []store.QueuedMessage {
	t.Helper()
	msgs, err := h.st.Fetch(t.Context(), c.uri, c.cursor, store.FetchLimit{})
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) > 0 {
		c.cursor = msgs[len(msgs)-1].Seq
		if _, err := h.st.Ack(t.Context(), c.uri, c.cursor); err != nil {
			t.Fatal(err)
		}
	}
	return msgs
}

// tclient is a client of the harness: its URI, signature key, KeyPackage
// (whose leaf carries a binding unless made unbound) and private keys.
type tclient struct {
	uri     string
	c       *client
	m       *mls.Member // the client's member state once in a group
	kpRef   []byte
	initKey hpke.PrivateKey
	cursor  uint64 // the last queued message taken (harness.queued)
}

// newTClient makes a client of URI mimi://a.example/d/<user>/<device>,
// bound by the harness's provider unless unbound.
func (h *harness) newTClient(t testing.TB, user, device string, unbound bool) *tclient {
	t.Helper()
	return h.newTClientEdit(t, user, device, unbound, nil)
}

// newTClientEdit is newTClient with edit, when set, changing the leaf
// (its lifetime, say) before its binding is attached and it is signed.
func (h *harness) newTClientEdit(t testing.TB, user, device string, unbound bool, edit func(leaf *mls.LeafNode)) *tclient {
	t.Helper()
	uri := moh.ClientURI(testProvider, user, device)
	c := newKeyPackageClient(t, mls.X25519AES128GCMSHA256Ed25519, user, uri, func(leaf *mls.LeafNode, pub []byte) {
		leaf.Capabilities.Extensions = []mls.ExtensionType{binding.ExtensionType}
		if edit != nil {
			edit(leaf)
		}
		if unbound {
			return
		}
		// The tests issue bindings with the provider's key ring, as the
		// local client API's POST /binding does.
		b, err := h.issuer.Issue([]byte(uri), pub, time.Now().Add(24*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if err := binding.Attach(leaf, b); err != nil {
			t.Fatal(err)
		}
	})
	ref, err := c.kp.Ref()
	if err != nil {
		t.Fatal(err)
	}
	return &tclient{uri: uri, c: c, kpRef: ref, initKey: c.initKey}
}

// do authenticates and handles an encoded request.
func (h *harness) do(t testing.TB, body []byte) (*moh.DSResponse, error) {
	t.Helper()
	req, err := h.svc.Authenticate(t.Context(), body)
	if err != nil {
		return nil, err
	}
	return h.svc.Handle(t.Context(), req)
}

// mustDo is do for a request that must succeed.
func (h *harness) mustDo(t testing.TB, what string, body []byte) *moh.DSResponse {
	t.Helper()
	resp, err := h.do(t, body)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return resp
}

// signed encodes body signed by c as member index.
func signed(t testing.TB, c *tclient, index uint32, body moh.RequestBody) []byte {
	t.Helper()
	b, err := SignRequest(c.c.kp.CipherSuite, c.c.signer, body, ClientSignature(index, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// createBody is the create_group request of c for a new group gid; it
// sets c.m to the creator's member state.
func createBody(t testing.TB, c *tclient, gid []byte) []byte {
	t.Helper()
	c.m = c.c.create(t, gid)
	gi, err := c.m.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	return signed(t, c, 0, moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{
		GroupID: gid, LeafNode: c.c.kp.LeafNode,
		GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}}})
}

// commitBody is the request of type typ carrying res, committed by the
// member m of client c.
func commitBody(t testing.TB, typ moh.RequestType, c *tclient, m *mls.Member, res *mls.CommitResult) []byte {
	t.Helper()
	body := moh.RequestBody{Type: typ, GroupUpdate: update(res)}
	if res.Welcome != nil {
		body.WelcomePackages = []moh.WelcomePackage{{Welcome: *res.Welcome}}
	}
	return signed(t, c, m.LeafIndex(), body)
}

// commit has member m of c commit proposals (and refs through resolve).
func commit(t testing.TB, m *mls.Member, props []*mls.Proposal, refs [][]byte, resolve mls.ProposalResolver) *mls.CommitResult {
	t.Helper()
	res, err := m.Commit(props, refs, resolve)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// addProps returns Add proposals of the clients' KeyPackages.
func addProps(cs ...*tclient) []*mls.Proposal {
	var out []*mls.Proposal
	for _, c := range cs {
		out = append(out, &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: c.c.kp})
	}
	return out
}

// join has each added client join from res's Welcome.
func join(t testing.TB, res *mls.CommitResult, cs ...*tclient) {
	t.Helper()
	for _, c := range cs {
		m, err := mls.JoinFromWelcome(res.Welcome.Welcome, mls.WelcomeOptions{KeyPackage: c.c.kp,
			InitKey: c.initKey, LeafKey: c.c.leafKey, Signer: c.c.signer})
		if err != nil {
			t.Fatal(err)
		}
		c.m = m
	}
}

// snapshot is what the store holds of a group: its state's encoding,
// its pending proposals, and whether it exists.
type snapshot struct {
	state     []byte
	pending   []store.PendingProposal
	groupInfo []byte
	exists    bool
}

func (h *harness) snapshot(t testing.TB, gid []byte) snapshot {
	t.Helper()
	st, err := h.st.LoadGroup(context.Background(), gid)
	if err != nil {
		return snapshot{}
	}
	enc, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	pending, err := h.st.PendingProposals(context.Background(), gid, st.Epoch())
	if err != nil {
		t.Fatal(err)
	}
	_, gi, err := h.st.GroupInfo(context.Background(), gid)
	if err != nil {
		t.Fatal(err)
	}
	return snapshot{state: enc, pending: pending, groupInfo: gi, exists: true}
}

func (a snapshot) equal(b snapshot) bool {
	if a.exists != b.exists || !bytes.Equal(a.state, b.state) || !bytes.Equal(a.groupInfo, b.groupInfo) || len(a.pending) != len(b.pending) {
		return false
	}
	for i := range a.pending {
		if !bytes.Equal(a.pending[i].Ref, b.pending[i].Ref) || !bytes.Equal(a.pending[i].Message, b.pending[i].Message) {
			return false
		}
	}
	return true
}

// resignGroupInfo changes the GroupInfo of res with edit and signs it
// again as c, the committer: a PartialGroupInfo other than the one
// mls.Member.Commit makes.
func resignGroupInfo(t testing.TB, res *mls.CommitResult, c *tclient, edit func(*mls.GroupInfo)) {
	t.Helper()
	gi := *res.GroupInfo.GroupInfo
	gi.Extensions = slices.Clone(gi.Extensions)
	edit(&gi)
	if err := gi.Sign(c.c.signer); err != nil {
		t.Fatal(err)
	}
	res.GroupInfo = &mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: &gi}
}

// withoutTree removes the ratchet_tree extension, as MIMI clients do in
// the GroupInfo they sign for the DS.
func withoutTree(gi *mls.GroupInfo) {
	gi.Extensions = slices.DeleteFunc(gi.Extensions, func(e mls.Extension) bool { return e.Type == mls.ExtRatchetTree })
}

// memberURIs lists the identities of g's members, distinct, in leaf
// order: the local members of a group whose clients all live here.
func memberURIs(g *mls.GroupState) []string {
	var out []string
	for _, i := range g.Tree().Members() {
		leaf, _ := g.Member(i)
		if id := string(leaf.Credential().Identity); !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}
