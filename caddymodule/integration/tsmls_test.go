package integration

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/testdir"
	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// The independent ts-mls peer (testdata/peers/ts-mls) against a gateway
// over TLS 1.3 through Caddy: every request its clients made in a group
// scenario is client-signed here with the member's own key and submitted
// to /group_operation, epoch by epoch; after each, what the gateway
// serves on /external_commit_information and /welcome_information is
// compared with the peer's bytes; at the end each application message
// must be in the queue of each member the peer had it decrypted by, as
// sent, once (read through the local client API). The transcripts are
// checked in (testdata/mls/ts-mls-peer/ds-scenario-cs*.json), so Node is
// not needed for them; where Node and npm are installed (CI), the peer is
// also run afresh and its new transcripts submitted the same way.

// tsSite is ts.localhost's site block. Its Delivery Service checks no
// client binding: the peer's leaves carry none (unchecked_client_bindings
// exists for replaying such third-party transcripts); nor the length of
// their lifetimes, ts-mls's default of 0 to 2^63-1
// (max_key_package_lifetime unlimited, likewise).
const tsSite = `
ts.localhost:9443 {
	tls internal {
		protocols tls1.3
	}
	mimi {
		provider ts.localhost
		ds_domain ts.localhost:9443
		data_dir {DATA}
		{BACKEND ts.localhost}
		unchecked_client_bindings
		max_key_package_lifetime unlimited
	}
	# The local client API, to read the clients' queues (the test header
	# stands in for an authentication handler).
	handle_path /local/* {
		mimi_local {
			provider ts.localhost
			data_dir {DATA}
			user {http.request.header.X-Test-User}
		}
	}
	respond "not mimi" 404
}
`

// startTSSite loads the shared configuration plus ts.localhost, with a
// data directory (and with postgres a database and bucket) of the test's
// own, waits until it serves TLS, and restores the shared configuration
// when the test ends.
func startTSSite(t *testing.T) {
	t.Helper()
	startCaddy(t)
	loadWithSite(t, "ts.localhost", strings.NewReplacer("{DATA}", filepath.Join(env.dir, "ts-"+t.Name()),
		backendLine("ts.localhost"), siteBackend(t, "ts.localhost")).Replace(tsSite))
}

// tsBytes is a hex string of a transcript.
type tsBytes []byte

func (h *tsBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	d, err := hex.DecodeString(s)
	*h = d
	return err
}

// tsTranscript is a transcript of the peer, format mimi-ds-transcript/1
// (testdata/mls/README.md).
type tsTranscript struct {
	Format      string          `json:"format"`
	CipherSuite mls.CipherSuite `json:"cipher_suite"`
	Provider    string          `json:"provider"`
	GroupID     tsBytes         `json:"group_id"`
	Clients     []tsClient      `json:"clients"`
	Requests    []tsRequest     `json:"requests"`
	Epochs      []tsEpoch       `json:"epochs"`
}

// tsClient is one client of the scenario, with its signature private key.
type tsClient struct {
	Name          string  `json:"name"`
	Identity      tsBytes `json:"identity"`
	IdentityText  string  `json:"identity_text"`
	SignatureKey  tsBytes `json:"signature_public_key"`
	SignaturePriv tsBytes `json:"signature_private_key"`
	KeyPackageRef tsBytes `json:"key_package_ref"`
}

// tsRequest is one DS request a client of the scenario made.
type tsRequest struct {
	Seq               int      `json:"seq"`
	Type              string   `json:"request_type"`
	From              string   `json:"from"`
	Auth              string   `json:"auth"`
	SenderIndex       uint32   `json:"sender_index"`
	Epoch             uint64   `json:"epoch"`
	Commit            tsBytes  `json:"commit"`
	GroupInfo         tsBytes  `json:"group_info"`
	ExternalGroupInfo tsBytes  `json:"external_group_info"`
	Welcomes          []string `json:"welcomes"`
	Joiners           []string `json:"joiners"`
	Proposal          tsBytes  `json:"proposal"`
	Message           tsBytes  `json:"message"`
	DecryptedBy       []string `json:"decrypted_by"`
}

// tsEpoch is the peer's group in one epoch.
type tsEpoch struct {
	Epoch       uint64     `json:"epoch"`
	CausedBySeq int        `json:"caused_by_seq"`
	RatchetTree tsBytes    `json:"ratchet_tree"`
	GroupInfo   tsBytes    `json:"group_info"`
	Members     []tsMember `json:"members"`
}

// tsMember is a member of an epoch.
type tsMember struct {
	LeafIndex uint32 `json:"leaf_index"`
	Client    string `json:"client"`
}

func readTSTranscript(t *testing.T, path string) *tsTranscript {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var tr tsTranscript
	if err := json.Unmarshal(data, &tr); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if tr.Format != "mimi-ds-transcript/1" {
		t.Fatalf("%s: format %q", path, tr.Format)
	}
	if tr.Provider != "ts.localhost" {
		t.Fatalf("%s: the clients are of %s, not ts.localhost", path, tr.Provider)
	}
	return &tr
}

// TestTSMLSPeerThroughCaddy submits the checked-in transcripts of the
// ts-mls peer, and where Node is installed freshly made ones, to
// ts.localhost.
func TestTSMLSPeerThroughCaddy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Caddy")
	}
	startTSSite(t)
	for _, cs := range []string{"1", "2"} {
		t.Run("checked-in/cs"+cs, func(t *testing.T) {
			path, err := testdir.Path("mls", "ts-mls-peer", "ds-scenario-cs"+cs+".json")
			if err != nil {
				t.Fatal(err)
			}
			replayTS(t, readTSTranscript(t, path))
		})
	}
	t.Run("regenerated", func(t *testing.T) {
		dir := installTSPeer(t)
		for _, cs := range []string{"1", "2"} {
			t.Run("cs"+cs, func(t *testing.T) {
				out := filepath.Join(t.TempDir(), "transcript.json")
				runTSPeer(t, dir, "ds-scenario.mjs", "--suite", cs, "--out", out)
				replayTS(t, readTSTranscript(t, out))
			})
		}
	})
}

// tsReplay is one transcript being submitted.
type tsReplay struct {
	t       *testing.T
	tr      *tsTranscript
	cs      mls.CipherSuite
	signers map[string]crypto.Signer
}

// replayTS submits every request of tr in order: each is accepted, each
// commit moves the group to the peer's next epoch, and what the gateway
// serves then is the peer's.
func replayTS(t *testing.T, tr *tsTranscript) {
	r := &tsReplay{t: t, tr: tr, cs: tr.CipherSuite, signers: make(map[string]crypto.Signer)}
	for _, c := range tr.Clients {
		signer, err := r.cs.ParseSignaturePrivateKey(c.SignaturePriv)
		if err != nil {
			t.Fatalf("client %s: %v", c.Name, err)
		}
		// The private key must be the one of the peer's leaf.
		sig, err := r.cs.SignWithLabel(signer, "key check", c.Identity)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.cs.VerifyWithLabel(c.SignatureKey, "key check", c.Identity, sig); err != nil {
			t.Fatalf("client %s: the private key is not the leaf's: %v", c.Name, err)
		}
		r.signers[c.Name] = signer
	}
	if len(tr.Epochs) == 0 || len(tr.Requests) == 0 || tr.Requests[0].Type != "create_group" {
		t.Fatal("the transcript does not start with create_group")
	}
	reached := -1 // the index in tr.Epochs of the last epoch reached
	for _, q := range tr.Requests {
		var body moh.RequestBody
		switch q.Type {
		case "create_group":
			var rt mls.RatchetTree
			if err := wire.Unmarshal(tr.Epochs[0].RatchetTree, &rt, "ratchet tree"); err != nil {
				t.Fatal(err)
			}
			if len(rt) != 1 || rt[0] == nil || rt[0].Leaf == nil {
				t.Fatalf("epoch 0's tree has %d nodes, not the creator's leaf alone", len(rt))
			}
			body = moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{
				GroupID: tr.GroupID, LeafNode: *rt[0].Leaf, GroupInfo: r.message(q.GroupInfo)}}
		case "add_users", "update_client", "remove_users", "external_join":
			gi := r.message(q.GroupInfo).GroupInfo
			body = moh.RequestBody{Type: tsRequestTypes[q.Type], GroupUpdate: moh.MLSGroupUpdate{Commit: r.message(q.Commit),
				PartialGroupInfo: moh.PartialGroupInfo{Extensions: gi.Extensions, Signature: gi.Signature}}}
			for _, w := range q.Welcomes {
				b, err := hex.DecodeString(w)
				if err != nil {
					t.Fatal(err)
				}
				body.WelcomePackages = append(body.WelcomePackages, moh.WelcomePackage{Welcome: r.message(b)})
			}
		case "self_remove_client":
			body = moh.RequestBody{Type: moh.SelfRemoveClient, Message: r.message(q.Proposal)}
		case "send_message":
			body = moh.RequestBody{Type: moh.SendMessage, Message: r.message(q.Message)}
		default:
			t.Fatalf("seq %d: request type %q", q.Seq, q.Type)
		}
		if q.Type == "external_join" {
			// The joiner took the GroupInfo a member of its user got from
			// the gateway: the one served is the one the peer joined from.
			served := r.externalCommitInfo(r.memberAt(r.epochIndex(q.Epoch)))
			if !bytes.Equal(served.GroupInfo, q.ExternalGroupInfo) {
				t.Errorf("seq %d: the GroupInfo served for the external join is not the one the peer joined from", q.Seq)
			}
		}
		var req []byte
		if q.Auth == "anonymous" {
			req = mustEncode(t, &moh.DSRequest{Body: body})
		} else {
			req = r.sign(q.From, body, ds.ClientSignature(q.SenderIndex, time.Now()))
		}
		r.mustOK(q.Seq, q.Type, "/group_operation", req, moh.ResponseOK)
		k := slices.IndexFunc(tr.Epochs, func(e tsEpoch) bool { return e.CausedBySeq == q.Seq })
		if k < 0 {
			continue // no new epoch: a proposal or an application message
		}
		if k != reached+1 {
			t.Fatalf("seq %d: the transcript's epoch %d follows its epoch %d", q.Seq, k, reached)
		}
		reached = k
		r.checkServed(k)
		for _, j := range q.Joiners {
			r.checkWelcomeInfo(k, j)
		}
		if q.Type == "create_group" {
			continue
		}
		// The same commit again is for an epoch the group has left.
		if code := r.post("/group_operation", req).Error.Code; code != moh.CodeStaleEpoch && code != moh.CodeCommitConflict {
			t.Errorf("seq %d: the %s replayed: %s, want %s or %s", q.Seq, q.Type, code, moh.CodeStaleEpoch, moh.CodeCommitConflict)
		}
		// A member the commit removed is no longer served.
		for _, m := range tr.Epochs[k-1].Members {
			if !slices.ContainsFunc(tr.Epochs[k].Members, func(n tsMember) bool {
				return n.Client == m.Client
			}) {
				req := r.sign(m.Client, moh.RequestBody{Type: moh.ExternalCommitInfo,
					ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: tr.GroupID}}, ds.ClientSignature(m.LeafIndex, time.Now()))
				if resp := r.post("/external_commit_information", req); resp.Error.Code != moh.CodeNotFound {
					t.Errorf("seq %d: %s, removed, asks for the GroupInfo: %s, want %s", q.Seq, m.Client, resp.Error.Code, moh.CodeNotFound)
				}
			}
		}
	}
	if reached != len(tr.Epochs)-1 {
		t.Fatalf("the requests reached epoch %d of the transcript's %d", reached, len(tr.Epochs))
	}
	r.checkQueues()
}

// checkQueues checks that each application message of the peer was
// delivered, as sent, once to the queue of each member the peer had it
// decrypted by, and not to its sender.
func (r *tsReplay) checkQueues() {
	r.t.Helper()
	queues := make(map[string][]localapi.Message) // by client name, this group's only
	for _, c := range r.tr.Clients {
		for _, m := range r.queue(c) {
			if bytes.Equal(m.GroupID, r.tr.GroupID) {
				queues[c.Name] = append(queues[c.Name], m)
			}
		}
	}
	for _, q := range r.tr.Requests {
		if q.Type != "send_message" {
			continue
		}
		sender := r.client(q.From)
		for _, c := range r.tr.Clients {
			n := 0
			for _, m := range queues[c.Name] {
				if bytes.Equal(m.Message, q.Message) {
					n++
					if string(m.Sender) != sender.IdentityText {
						r.t.Errorf("seq %d: %s's copy is from %q, not %s", q.Seq, c.Name, m.Sender, sender.IdentityText)
					}
				}
			}
			want := 0
			if slices.Contains(q.DecryptedBy, c.Name) {
				want = 1
			}
			if n != want {
				r.t.Errorf("seq %d: %s's message is %d times in %s's queue, want %d", q.Seq, q.From, n, c.Name, want)
			}
		}
	}
}

// queue returns the messages in c's queue, read as c's user through the
// local client API.
func (r *tsReplay) queue(c tsClient) []localapi.Message {
	r.t.Helper()
	_, user, _, err := moh.ParseClientURI([]byte(c.IdentityText))
	if err != nil {
		r.t.Fatalf("client %s: %v", c.Name, err)
	}
	req, err := http.NewRequest(http.MethodGet, "https://ts.localhost:9443/local/messages?limit=1000&client="+url.QueryEscape(c.IdentityText), nil)
	if err != nil {
		r.t.Fatal(err)
	}
	req.Header.Set("X-Test-User", string(user))
	resp, err := client(tls.VersionTLS13).Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		r.t.Fatalf("fetching %s's queue: %d %q %v", c.Name, resp.StatusCode, body, err)
	}
	var list localapi.MessageList
	if err := wire.Unmarshal(body, &list, "MessageList"); err != nil {
		r.t.Fatal(err)
	}
	return list.Messages
}

// client returns the transcript's client name.
func (r *tsReplay) client(name string) tsClient {
	r.t.Helper()
	i := slices.IndexFunc(r.tr.Clients, func(c tsClient) bool { return c.Name == name })
	if i < 0 {
		r.t.Fatalf("no client %s", name)
	}
	return r.tr.Clients[i]
}

// epochIndex returns the index in Epochs of epoch e.
func (r *tsReplay) epochIndex(e uint64) int {
	r.t.Helper()
	k := slices.IndexFunc(r.tr.Epochs, func(x tsEpoch) bool { return x.Epoch == e })
	if k < 0 {
		r.t.Fatalf("the transcript has no epoch %d", e)
	}
	return k
}

// tsRequestTypes are the commit-carrying request types of the transcripts.
var tsRequestTypes = map[string]moh.RequestType{
	"add_users": moh.AddUsers, "update_client": moh.UpdateClient, "remove_users": moh.RemoveUsers,
	"external_join": moh.ExternalJoin,
}

// message decodes an MLSMessage of the transcript.
func (r *tsReplay) message(data []byte) mls.MLSMessage {
	r.t.Helper()
	m, err := mls.DecodeMLSMessage(data)
	if err != nil {
		r.t.Fatal(err)
	}
	return *m
}

// sign encodes body signed by the transcript's client name.
func (r *tsReplay) sign(name string, body moh.RequestBody, auth moh.AuthData) []byte {
	r.t.Helper()
	signer, ok := r.signers[name]
	if !ok {
		r.t.Fatalf("no client %s", name)
	}
	req, err := ds.SignRequest(r.cs, signer, body, auth)
	if err != nil {
		r.t.Fatal(err)
	}
	return req
}

// post sends a DSRequest to ts.localhost's path and decodes the answer.
func (r *tsReplay) post(path string, req []byte) *moh.DSResponse {
	r.t.Helper()
	resp, body := get(r.t, client(tls.VersionTLS13), http.MethodPost, "https://ts.localhost:9443"+path, "application/octet-stream", req)
	var d moh.DSResponse
	if err := wire.Unmarshal(body, &d, "DSResponse"); err != nil {
		r.t.Fatalf("%s: status %d, body is not a DSResponse: %v", path, resp.StatusCode, err)
	}
	if (resp.StatusCode == http.StatusOK) != (d.Type != moh.ResponseError) {
		r.t.Fatalf("%s: status %d with a DSResponse of type %d", path, resp.StatusCode, d.Type)
	}
	return &d
}

// mustOK posts a request that must be answered with a response of type
// want.
func (r *tsReplay) mustOK(seq int, what, path string, req []byte, want moh.ResponseType) *moh.DSResponse {
	r.t.Helper()
	d := r.post(path, req)
	if d.Type != want {
		r.t.Fatalf("seq %d: %s: %s %q", seq, what, d.Error.Code, d.Error.Message)
	}
	return d
}

// memberAt returns a member of epoch e (its lowest leaf).
func (r *tsReplay) memberAt(e int) (name string, leaf uint32) {
	m := r.tr.Epochs[e].Members[0]
	return m.Client, m.LeafIndex
}

// externalCommitInfo asks for the group's GroupInfo and tree as member
// name at leaf.
func (r *tsReplay) externalCommitInfo(name string, leaf uint32) *moh.DSResponse {
	r.t.Helper()
	req := r.sign(name, moh.RequestBody{Type: moh.ExternalCommitInfo,
		ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: r.tr.GroupID}}, ds.ClientSignature(leaf, time.Now()))
	return r.mustOK(0, "external_commit_info", "/external_commit_information", req, moh.ResponseExternalCommitInfo)
}

// checkServed compares the GroupInfo and tree /external_commit_information
// serves a member of epoch k with the peer's.
func (r *tsReplay) checkServed(k int) {
	r.t.Helper()
	want := r.tr.Epochs[k]
	got := r.externalCommitInfo(r.memberAt(k))
	if !bytes.Equal(got.GroupInfo, want.GroupInfo) {
		r.t.Errorf("epoch %d: the GroupInfo served is not the peer's\n got %x\nwant %x", want.Epoch, got.GroupInfo, []byte(want.GroupInfo))
	}
	if !bytes.Equal(got.RatchetTree, want.RatchetTree) {
		r.t.Errorf("epoch %d: the tree served is not the peer's\n got %x\nwant %x", want.Epoch, got.RatchetTree, []byte(want.RatchetTree))
	}
}

// checkWelcomeInfo has joiner, with its KeyPackage's key, ask for the tree
// of epoch k, the one its Welcome is for, and compares it with the peer's.
func (r *tsReplay) checkWelcomeInfo(k int, joiner string) {
	r.t.Helper()
	want := r.tr.Epochs[k]
	req := r.sign(joiner, moh.RequestBody{Type: moh.WelcomeInfo,
		WelcomeInfo: moh.WelcomeInfoRequest{GroupID: r.tr.GroupID, Epoch: want.Epoch}},
		ds.KeyPackageSignature(r.client(joiner).KeyPackageRef, time.Now()))
	got := r.mustOK(0, "welcome_info of "+joiner, "/welcome_information", req, moh.ResponseWelcomeInfo)
	if !bytes.Equal(got.RatchetTree, want.RatchetTree) {
		r.t.Errorf("epoch %d: the tree served to joiner %s is not the peer's", want.Epoch, joiner)
	}
}

// installTSPeer copies testdata/peers/ts-mls to a temporary directory
// and installs its locked dependencies there with npm ci, so the work
// tree stays untouched. Without node or npm the test is skipped, or
// fails when $CI is set: CI installs both (.ci/run).
func installTSPeer(t *testing.T) string {
	t.Helper()
	for _, bin := range []string{"node", "npm"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed; running the ts-mls peer needs Node >= 20.19 and npm", bin)
			}
			t.Skipf("%s is not installed; running the ts-mls peer needs Node >= 20.19 and npm", bin)
		}
	}
	src, err := testdir.Path("peers", "ts-mls")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	err = filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() == "node_modules" {
			return filepath.SkipDir
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dir, rel), 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--no-update-notifier", "--loglevel=error")
	cmd.Dir = dir
	if os.Getenv("npm_config_cache") == "" && os.Getenv("NPM_CONFIG_CACHE") == "" {
		cmd.Env = append(os.Environ(), "npm_config_cache="+filepath.Join(dir, ".npm-cache"))
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}
	return dir
}

// runTSPeer runs `node args...` in dir, the peer's installed copy; it
// fails the test unless node exits 0.
func runTSPeer(t *testing.T, dir string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("node %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
