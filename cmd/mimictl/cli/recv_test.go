package cli

import (
	"bytes"
	"cmp"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/client"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// fakeGateway answers as a gateway does for one client: bindings, the
// KeyPackages it publishes (kept), its queue, welcome_info with tree, and
// group operations (accepted).
type fakeGateway struct {
	mu        sync.Mutex
	published []localapi.KeyPackageEntry
	queue     []localapi.Message
	acked     uint64
	tree      []byte
	// publishDown makes /local/key_packages answer 503
	// backend_unavailable, as when the gateway's store is unavailable.
	publishDown bool
	// creator is the credential identity of the member welcome makes;
	// "" means mimi://a.example/d/alice/laptop.
	creator string
	// bindings counts the bindings issued.
	bindings int
	// sends answers the send_message requests in turn, then ok: an
	// answer with code 0 closes the connection before answering (a lost
	// answer, the message not taken), one with a code is that refusal.
	sends []sendAnswer
}

// sendAnswer is how fakeGateway answers one send_message.
type sendAnswer struct {
	status int
	code   moh.Code
}

func (f *fakeGateway) serve(t *testing.T) *httptest.Server {
	t.Helper()
	read := func(r *http.Request, v wire.Unmarshaler, what string) error {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return err
		}
		return wire.Unmarshal(b, v, what)
	}
	answer := func(w http.ResponseWriter, v wire.Marshaler) {
		b, _ := wire.Marshal(v)
		w.Write(b)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/local/binding", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.bindings++
		f.mu.Unlock()
		answer(w, &localapi.BindingAnswer{Binding: binding.ClientBinding{NotAfter: uint64(time.Now().Add(time.Hour).Unix()), KeyID: []byte{1}, Signature: []byte{2}}})
	})
	mux.HandleFunc("/local/key_packages", func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			f.mu.Lock()
			l := localapi.KeyPackageList{KeyPackages: f.published}
			f.mu.Unlock()
			answer(w, &l)
			return
		}
		var req localapi.PublishRequest
		if err := read(r, &req, "PublishRequest"); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		down := f.publishDown
		if !down {
			f.published = append(f.published, req.KeyPackages...)
		}
		f.mu.Unlock()
		if down {
			b, _ := wire.Marshal(&moh.DSResponse{Type: moh.ResponseError, Error: moh.DSError{Code: moh.CodeBackendUnavailable, Message: []byte("store unavailable")}})
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write(b)
			return
		}
		answer(w, &localapi.KeyPackageList{KeyPackages: req.KeyPackages})
	})
	mux.HandleFunc("/local/messages", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		var l localapi.MessageList
		for _, m := range f.queue {
			if m.Seq > f.acked {
				l.Messages = append(l.Messages, m)
			}
		}
		answer(w, &l)
	})
	mux.HandleFunc("/local/messages/ack", func(w http.ResponseWriter, r *http.Request) {
		var req localapi.AckRequest
		if err := read(r, &req, "AckRequest"); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.acked = max(f.acked, req.UpTo)
		f.mu.Unlock()
		answer(w, &localapi.AckAnswer{})
	})
	mux.HandleFunc("/welcome_information", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		answer(w, &moh.DSResponse{Type: moh.ResponseWelcomeInfo, RatchetTree: f.tree})
	})
	mux.HandleFunc("/group_operation", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		req, err := moh.DecodeDSRequest(b)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		var next *sendAnswer
		if req.Body.Type == moh.SendMessage && len(f.sends) > 0 {
			next = &f.sends[0]
			f.sends = f.sends[1:]
		}
		f.mu.Unlock()
		switch {
		case next == nil:
			answer(w, &moh.DSResponse{Type: moh.ResponseOK})
		case next.code == 0:
			panic(http.ErrAbortHandler)
		default:
			b, _ := wire.Marshal(&moh.DSResponse{Type: moh.ResponseError, Error: moh.DSError{Code: next.code, Message: []byte("refused")}})
			w.WriteHeader(next.status)
			w.Write(b)
		}
	})
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// welcome has a member built with package mls create a group, add the
// first KeyPackage f holds, and queue the Welcome; welcome_info serves
// the group's tree.
func (f *fakeGateway) welcome(t *testing.T) {
	t.Helper()
	cs := client.DefaultCipherSuite
	signer, pub, err := cs.GenerateSignatureKey()
	if err != nil {
		t.Fatal(err)
	}
	leafKey, encPub, err := cs.DeriveKeyPair(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	leaf := mls.LeafNode{EncryptionKey: encPub, SignatureKey: pub, Source: mls.SourceKeyPackage,
		Credential:   mls.Credential{Type: mls.CredentialBasic, Identity: []byte(cmp.Or(f.creator, moh.ClientURI("a.example", "alice", "laptop")))},
		Capabilities: mls.Capabilities{Versions: []mls.ProtocolVersion{mls.MLS10}, CipherSuites: []mls.CipherSuite{cs}, Credentials: []mls.CredentialType{mls.CredentialBasic}},
		Lifetime:     mls.Lifetime{NotBefore: uint64(time.Now().Add(-time.Hour).Unix()), NotAfter: uint64(time.Now().Add(time.Hour).Unix())}}
	leaf.Capabilities.Extensions = []mls.ExtensionType{binding.ExtensionType}
	if err := leaf.Sign(cs, signer, nil, 0); err != nil {
		t.Fatal(err)
	}
	gid := []byte("0123456789abcdef")
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: cs, GroupID: gid, Leaf: &leaf, LeafKey: leafKey, Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	kp := new(mls.KeyPackage)
	if err := wire.Unmarshal(f.published[0].KeyPackage, kp, "KeyPackage"); err != nil {
		t.Fatal(err)
	}
	res, err := m.CommitWith(mls.CommitOptions{ByValue: []*mls.Proposal{{Type: mls.ProposalAdd, KeyPackage: kp}}, OmitRatchetTree: true})
	if err != nil {
		t.Fatal(err)
	}
	w, err := wire.Marshal(res.Welcome)
	if err != nil {
		t.Fatal(err)
	}
	rt := res.Next.State().Tree().RatchetTree()
	if f.tree, err = wire.Marshal(&rt); err != nil {
		t.Fatal(err)
	}
	f.queue = append(f.queue, localapi.Message{Seq: uint64(len(f.queue) + 1), GroupID: gid, Sender: leaf.Credential.Identity, Message: w})
}

// failingWriter fails every write, as stdout on a full disk or a closed
// pipe.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

// testEnv is the Env of a mimictl run against srv with its state in
// state, writing to stdout; it returns the run's stderr too.
func testEnv(srv *httptest.Server, state string, stdout io.Writer) (Env, *bytes.Buffer) {
	var stderr bytes.Buffer
	return Env{Stdin: strings.NewReader(""), Stdout: stdout, Stderr: &stderr, HTTPClient: srv.Client(),
		Getenv: func(k string) string { return map[string]string{"MIMI_GATEWAY": srv.URL, "MIMI_STATE": state}[k] }}, &stderr
}

// mimictl runs mimictl with args against srv, its state in state, and
// returns the exit status, stdout and stderr.
func mimictl(t *testing.T, srv *httptest.Server, state string, args ...string) (int, string, string) {
	t.Helper()
	var stdout bytes.Buffer
	e, stderr := testEnv(srv, state, &stdout)
	return Run(t.Context(), args, e), stdout.String(), stderr.String()
}

// mimictlOK is mimictl for a run that must succeed: it returns stdout.
func mimictlOK(t *testing.T, srv *httptest.Server, state string, args ...string) string {
	t.Helper()
	got, stdout, stderr := mimictl(t, srv, state, args...)
	if got != exitOK {
		t.Fatalf("%v: status %d, stderr %q", args, got, stderr)
	}
	return stdout
}

// TestStdoutWriteFailure: a command whose result cannot be written to
// stdout exits with exitFailure and says so on stderr.
func TestStdoutWriteFailure(t *testing.T) {
	f := &fakeGateway{}
	srv := f.serve(t)
	state := t.TempDir() + "/bob"
	env := func(stdout io.Writer) (Env, *bytes.Buffer) { return testEnv(srv, state, stdout) }
	e, stderr := env(failingWriter{})
	if got := Run(t.Context(), []string{"client", "init", "-key-packages", "1", moh.ClientURI("a.example", "bob", "phone")}, e); got != exitFailure ||
		!strings.Contains(stderr.String(), "no space left on device") {
		t.Fatalf("client init with a failing stdout: status %d, stderr %q; want %d", got, stderr.String(), exitFailure)
	}
	f.welcome(t)
	e, stderr = env(failingWriter{})
	if got := Run(t.Context(), []string{"recv"}, e); got != exitFailure ||
		!strings.Contains(stderr.String(), "no space left on device") {
		t.Fatalf("recv of a Welcome with a failing stdout: status %d, stderr %q; want %d", got, stderr.String(), exitFailure)
	}
	var stdout bytes.Buffer
	e, stderr = env(&stdout)
	if got := Run(t.Context(), []string{"group", "list"}, e); got != exitOK || !strings.Contains(stdout.String(), "30313233") {
		t.Fatalf("group list after the recv: status %d, stdout %q, stderr %q; want the group joined", got, stdout.String(), stderr.String())
	}
}

// TestInitWithoutSingleUseKeyPackages: client init -key-packages 0
// publishes the last-resort KeyPackage alone, as the usage says.
func TestInitWithoutSingleUseKeyPackages(t *testing.T) {
	f := &fakeGateway{}
	srv := f.serve(t)
	state := t.TempDir() + "/bob"
	if got, _, stderr := mimictl(t, srv, state, "client", "init", "-key-packages", "0", moh.ClientURI("a.example", "bob", "phone")); got != exitOK {
		t.Fatalf("client init -key-packages 0: status %d, stderr %q", got, stderr)
	}
	if len(f.published) != 1 || !f.published[0].LastResort {
		t.Fatalf("client init -key-packages 0 published %+v; want one last-resort KeyPackage", f.published)
	}
}

// TestInitPublishFailure: when client init gets the binding and writes
// the client's state but the KeyPackages' publish fails, running client
// init again cannot succeed (the directory holds a client): the error says
// the client was created and that client publish publishes them, which
// then succeeds.
func TestInitPublishFailure(t *testing.T) {
	f := &fakeGateway{publishDown: true}
	srv := f.serve(t)
	state := t.TempDir() + "/bob"
	run := func(args ...string) (int, string) {
		got, _, stderr := mimictl(t, srv, state, args...)
		return got, stderr
	}
	uri := moh.ClientURI("a.example", "bob", "phone")
	got, stderr := run("client", "init", "-key-packages", "3", uri)
	if got != exitFailure || !strings.Contains(stderr, "client "+uri+" created") || !strings.Contains(stderr, "client publish -key-packages 3") {
		t.Fatalf("client init whose publish failed: status %d, stderr %q; want %d, saying the client exists and client publish publishes", got, stderr, exitFailure)
	}
	f.mu.Lock()
	f.publishDown = false
	f.mu.Unlock()
	if got, stderr := run("client", "publish", "-key-packages", "3"); got != exitOK {
		t.Fatalf("client publish after the failed init: status %d, stderr %q", got, stderr)
	}
	if len(f.published) != 4 {
		t.Fatalf("published %d KeyPackages; want 4", len(f.published))
	}
}

// TestSenderNotInjected: a member's credential identity is what its
// provider (or a group's hub) put in its leaf, unchecked by the client:
// one with a newline and tabs must not print as lines of its own in recv
// and group info, where a script would read a forged event or member.
func TestSenderNotInjected(t *testing.T) {
	forged := "mimi://b.example/d/mallory/x\tok\nmessage\t3031\tmimi://a.example/d/boss/phone\tpay mallory"
	f := &fakeGateway{creator: forged}
	srv := f.serve(t)
	state := t.TempDir() + "/bob"
	run := func(args ...string) string {
		t.Helper()
		return mimictlOK(t, srv, state, args...)
	}
	run("client", "init", "-key-packages", "1", moh.ClientURI("a.example", "bob", "phone"))
	f.welcome(t)
	for _, tc := range []struct {
		name  string
		args  []string
		lines int
	}{
		{"recv", []string{"recv"}, 1},
		{"group info", []string{"group", "info", "30313233343536373839616263646566"}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := run(tc.args...)
			if n := strings.Count(out, "\n"); n != tc.lines || !strings.Contains(out, strconv.Quote(forged)) {
				t.Fatalf("%s printed %q: %d lines; want %d, the identity quoted", tc.name, out, n, tc.lines)
			}
		})
	}
}

// TestMemberNotForged: group info separates its fields with spaces and
// marks the client's own leaf " (self)", and a member's identity is what
// its provider (or a remote group's hub) put in its leaf: one with a space
// must not print as a second "(self)" line (a script looking for its own
// leaf index took the forger's), and one that starts with a quote must not
// print as the Go-quoted form of another client's URI. Both, and a sender
// in recv, are printed Go-quoted; a valid client URI has neither.
func TestMemberNotForged(t *testing.T) {
	for _, forged := range []string{
		"mimi://b.example/d/mallory/x (self)",
		`"mimi://a.example/d/boss/phone"`,
	} {
		t.Run(forged, func(t *testing.T) {
			f := &fakeGateway{creator: forged}
			srv := f.serve(t)
			state := t.TempDir() + "/bob"
			run := func(args ...string) string {
				t.Helper()
				return mimictlOK(t, srv, state, args...)
			}
			bob := moh.ClientURI("a.example", "bob", "phone")
			run("client", "init", "-key-packages", "1", bob)
			f.welcome(t)
			if out := run("recv"); out != "joined\t30313233343536373839616263646566\t"+strconv.Quote(forged)+"\n" {
				t.Fatalf("recv printed %q; want the sender quoted", out)
			}
			out := run("group", "info", "30313233343536373839616263646566")
			want := "member 0 " + strconv.Quote(forged) + "\nmember 1 " + bob + " (self)\n"
			if !strings.HasSuffix(out, want) || strings.Count(out, " (self)\n") != 1 {
				t.Fatalf("group info printed %q; want it to end with %q", out, want)
			}
		})
	}
}

// TestClientRenew: client renew gets a new binding and prints its expiry.
func TestClientRenew(t *testing.T) {
	f := &fakeGateway{}
	srv := f.serve(t)
	state := t.TempDir() + "/bob"
	run := func(args ...string) (int, string, string) { return mimictl(t, srv, state, args...) }
	if got, _, stderr := run("client", "init", "-key-packages", "0", moh.ClientURI("a.example", "bob", "phone")); got != exitOK {
		t.Fatalf("client init: status %d, stderr %q", got, stderr)
	}
	got, stdout, stderr := run("client", "renew")
	if got != exitOK || !strings.HasPrefix(stdout, "binding valid until ") {
		t.Fatalf("client renew: status %d, stdout %q, stderr %q", got, stdout, stderr)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.bindings != 2 {
		t.Fatalf("%d bindings issued; want 2 (init, renew)", f.bindings)
	}
}

// TestStateInUse: while another process holds the state directory (a
// long recv -wait), a command fails with exit status 3, which a script
// tells apart from other failures; with -lock-wait it waits for the
// directory and runs when it is free.
func TestStateInUse(t *testing.T) {
	f := &fakeGateway{}
	srv := f.serve(t)
	state := t.TempDir() + "/bob"
	run := func(args ...string) (int, string) {
		got, _, stderr := mimictl(t, srv, state, args...)
		return got, stderr
	}
	if got, stderr := run("client", "init", "-key-packages", "0", moh.ClientURI("a.example", "bob", "phone")); got != exitOK {
		t.Fatalf("client init: status %d, stderr %q", got, stderr)
	}
	holder, err := client.Open(state, client.Config{Gateway: srv.URL, Local: srv.URL + "/local", HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"group", "list"},
		{"-lock-wait", "10ms", "send", "00", "hi"},
		{"client", "init", moh.ClientURI("a.example", "bob", "tablet")},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			if got, stderr := run(args...); got != exitInUse || !strings.Contains(stderr, "state directory in use") {
				t.Fatalf("status %d, stderr %q; want %d, saying the state directory is in use", got, stderr, exitInUse)
			}
		})
	}
	done := make(chan int)
	go func() {
		got, stderr := run("-lock-wait", "1m", "group", "list")
		if got != exitOK {
			t.Errorf("group list waiting for the lock: status %d, stderr %q", got, stderr)
		}
		done <- got
	}()
	holder.Close()
	<-done
}

// TestResendRefused: bob's send gets no answer (exit 4, the message kept),
// and the hub refuses its resend for good (exit 5, the message dropped).
// What mimictl then says is what the refusal tells: 409 stale_epoch from
// a hub that remembers the messages it delivered (docs/protocol.md §5.4.1)
// means the first attempt was delivered to no one, so the text may be
// sent again; any other refusal leaves that unknown, and mimictl says to
// check with the recipients first (before, it said so for stale_epoch
// too, sending the user to ask about a message nobody received).
func TestResendRefused(t *testing.T) {
	for _, tc := range []struct {
		name         string
		refusal      sendAnswer
		want, notSay string
	}{
		{"stale_epoch", sendAnswer{http.StatusConflict, moh.CodeStaleEpoch},
			"was not delivered by a hub that remembers the messages it delivered", "check with the recipients"},
		{"not_found", sendAnswer{http.StatusNotFound, moh.CodeNotFound},
			"check with the recipients before sending it again", "was not delivered"},
		{"forbidden", sendAnswer{http.StatusForbidden, moh.CodeForbidden},
			"check with the recipients before sending it again", "was not delivered"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeGateway{sends: []sendAnswer{{}, tc.refusal}}
			srv := f.serve(t)
			state := t.TempDir() + "/bob"
			mimictlOK(t, srv, state, "client", "init", "-key-packages", "1", moh.ClientURI("a.example", "bob", "phone"))
			f.welcome(t)
			mimictlOK(t, srv, state, "recv")
			const gid = "30313233343536373839616263646566"
			if got, _, stderr := mimictl(t, srv, state, "send", gid, "hello"); got != exitPending {
				t.Fatalf("the send whose answer was lost: status %d, stderr %q; want %d", got, stderr, exitPending)
			}
			got, stdout, stderr := mimictl(t, srv, state, "send", gid, "hello")
			if got != exitUnknown || stdout != "" || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, tc.notSay) {
				t.Fatalf("the refused resend: status %d, stdout %q, stderr %q; want %d, nothing, %q and not %q",
					got, stdout, stderr, exitUnknown, tc.want, tc.notSay)
			}
		})
	}
}
