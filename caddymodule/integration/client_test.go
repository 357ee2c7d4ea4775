package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-mimi/caddy-mimi/cmd/mimictl/cli"
	mimiclient "github.com/caddy-mimi/caddy-mimi/mimicore/client"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// The Go client (mimicore/client) against a provider whose local client
// API sits behind basic_auth, as in the README: m.localhost, added to the
// shared configuration for the length of a test.

// clientUsers are the basic_auth users of m.localhost and their passwords.
// alice's and bob's are the README's.
var clientUsers = map[string]string{"alice": "correct horse", "bob": "battery staple", "carol": "carol's secret"}

// clientSite is m.localhost's site block: the gateway and, under /local/,
// the local client API behind basic_auth. {USERS} becomes the basic_auth
// accounts, {DATA} the provider's data directory, the backend line its
// store and storage options (siteBackend).
const clientSite = `
m.localhost:9443 {
	tls internal {
		protocols tls1.3
	}
	mimi {
		provider m.localhost
		ds_domain m.localhost:9443
		data_dir {DATA}
		{BACKEND m.localhost}
	}
	handle_path /local/* {
		basic_auth {
{USERS}
		}
		mimi_local {
			provider m.localhost
			data_dir {DATA}
			user {http.auth.user.id}
			max_wait 10s
		}
	}
	respond "not mimi" 404
}
`

// startClientSite loads the shared configuration plus m.localhost, with
// a data directory (and with postgres a database and bucket) of the
// test's own (so that the tests' clients do not meet), waits until
// m.localhost serves TLS, and restores the shared configuration when the
// test ends.
func startClientSite(t *testing.T) {
	t.Helper()
	startClientSiteWith(t, "", "")
}

// startClientSiteWith is startClientSite with m.localhost's mimi block
// given the options gateway and its mimi_local block the options local
// (tab-indented lines, or "").
func startClientSiteWith(t *testing.T, gateway, local string) {
	t.Helper()
	startCaddy(t)
	var users strings.Builder
	for name, pw := range clientUsers {
		hash, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&users, "\t\t\t%s %s\n", name, hash)
	}
	site := strings.NewReplacer("{DATA}", filepath.Join(env.dir, "m-"+t.Name()), "{USERS}", strings.TrimRight(users.String(), "\n"),
		backendLine("m.localhost"), siteBackend(t, "m.localhost")+gateway,
		"\t\t\tmax_wait 10s\n", "\t\t\tmax_wait 10s\n"+local).Replace(clientSite)
	loadWithSite(t, "m.localhost", site)
}

// clientHTTP is an HTTP client for mimicore/client: TLS 1.3 only, the
// test root, every host dialled on Caddy's loopback address, and no
// overall timeout (long polls are bounded by their wait).
func clientHTTP() *http.Client {
	hc := mimiclient.NewHTTPClient(env.roots)
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	hc.Transport.(*http.Transport).DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dialer.DialContext(ctx, network, httpsAddr)
	}
	return hc
}

// clientConfig is the configuration of a client of user on m.localhost.
func clientConfig(user string) mimiclient.Config {
	return mimiclient.Config{
		Gateway:    "https://m.localhost:9443",
		Local:      "https://m.localhost:9443/local",
		Authorize:  mimiclient.BasicAuth(user, clientUsers[user]),
		HTTPClient: clientHTTP(),
	}
}

// newGoClient initialises client <user>/<device> in a fresh state
// directory.
func newGoClient(t *testing.T, user, device string) *mimiclient.Client {
	t.Helper()
	c, err := mimiclient.Init(t.Context(), filepath.Join(t.TempDir(), user+"-"+device), clientConfig(user),
		mimiclient.InitOptions{ClientURI: moh.ClientURI("m.localhost", user, device), KeyPackages: 3})
	if err != nil {
		t.Fatalf("initialising %s/%s: %v", user, device, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// receive has c fetch and process its queue, waiting for the first
// message, until it got want events; it returns them.
func receive(t *testing.T, c *mimiclient.Client, want int) []mimiclient.Event {
	t.Helper()
	var out []mimiclient.Event
	for tries := 0; len(out) < want && tries < 10; tries++ {
		evs, err := c.Receive(t.Context(), 5*time.Second)
		if err != nil {
			t.Fatalf("%s receives: %v", c.URI(), err)
		}
		out = append(out, evs...)
	}
	if len(out) != want {
		t.Fatalf("%s received %d events, want %d: %+v", c.URI(), len(out), want, out)
	}
	for _, ev := range out {
		if ev.Kind == mimiclient.EventSkipped {
			t.Fatalf("%s skipped message %d: %v", c.URI(), ev.Seq, ev.Err)
		}
	}
	return out
}

// expectEvent checks one event's kind, group, sender and, for a message,
// its text.
func expectEvent(t *testing.T, who string, ev mimiclient.Event, kind mimiclient.EventKind, gid []byte, sender, text string) {
	t.Helper()
	if ev.Kind != kind || !bytes.Equal(ev.GroupID, gid) || (sender != "" && ev.Sender != sender) || string(ev.Data) != text {
		t.Fatalf("%s got %s from %q in %x: %q; want %s from %q in %x: %q", who, ev.Kind, ev.Sender, ev.GroupID, ev.Data,
			kind, sender, gid, text)
	}
}

// TestGoClientSession runs a group through m.localhost with the Go
// client, every request over TLS 1.3 through Caddy and the local API
// behind basic_auth: alice creates a group and adds bob (who joins from
// his queued Welcome with the tree welcome_info serves), both send and
// receive, bob updates, alice adds carol's phone, carol's laptop joins
// externally with the GroupInfo her phone fetches, alice removes bob,
// whose next request is 404, and the others go on, alice from a state
// reopened from disk.
func TestGoClientSession(t *testing.T) {
	startClientSite(t)
	alice := newGoClient(t, "alice", "phone")
	bob := newGoClient(t, "bob", "phone")
	carol := newGoClient(t, "carol", "phone")
	laptop := newGoClient(t, "carol", "laptop")
	ctx := t.Context()

	// The local API authorises per user: bob cannot get a binding for
	// alice's client.
	_, err := mimiclient.Init(ctx, t.TempDir(), clientConfig("bob"), mimiclient.InitOptions{ClientURI: alice.URI()})
	if code, ok := mimiclient.CodeOf(err); !ok || code != moh.CodeForbidden {
		t.Fatalf("bob initialising alice's client: %v, want forbidden", err)
	}
	// Credentials the basic_auth in front refuses: 401, no DSError.
	wrong := clientConfig("bob")
	wrong.Authorize = mimiclient.BasicAuth("bob", "not bob's password")
	_, err = mimiclient.Init(ctx, t.TempDir(), wrong, mimiclient.InitOptions{ClientURI: moh.ClientURI("m.localhost", "bob", "tablet")})
	var refused *mimiclient.Error
	if _, coded := mimiclient.CodeOf(err); !errors.As(err, &refused) || refused.Status != http.StatusUnauthorized || coded {
		t.Fatalf("initialising with a wrong password: %v, want a 401 that is not a DSError", err)
	}
	if n, err := bob.PublishedKeyPackages(ctx); err != nil || n != 4 {
		t.Fatalf("bob's published KeyPackages: %d, %v; want 3 and a last-resort one", n, err)
	}

	gid, err := alice.CreateGroup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Add(ctx, gid, "mimi://m.localhost/u/bob"); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, "bob", receive(t, bob, 1)[0], mimiclient.EventJoined, gid, "", "")
	if n, err := bob.PublishedKeyPackages(ctx); err != nil || n != 3 {
		t.Fatalf("bob's KeyPackages after the add: %d, %v; want 3", n, err)
	}

	// Both send and receive.
	if err := alice.Send(ctx, gid, []byte("hello bob")); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, "bob", receive(t, bob, 1)[0], mimiclient.EventMessage, gid, alice.URI(), "hello bob")
	if err := bob.Send(ctx, gid, []byte("hello alice")); err != nil {
		t.Fatal(err)
	}
	if err := bob.Send(ctx, gid, []byte("how are you?")); err != nil {
		t.Fatal(err)
	}
	evs := receive(t, alice, 2)
	expectEvent(t, "alice", evs[0], mimiclient.EventMessage, gid, bob.URI(), "hello alice")
	expectEvent(t, "alice", evs[1], mimiclient.EventMessage, gid, bob.URI(), "how are you?")

	// bob updates; alice follows.
	if err := bob.Update(ctx, gid); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, "alice", receive(t, alice, 1)[0], mimiclient.EventCommit, gid, bob.URI(), "")

	// A commit of a past epoch is refused: alice's state is behind until
	// she receives, so her commit races bob's and loses.
	if err := bob.Update(ctx, gid); err != nil {
		t.Fatal(err)
	}
	err = alice.Update(ctx, gid)
	if code, _ := mimiclient.CodeOf(err); code != moh.CodeStaleEpoch && code != moh.CodeCommitConflict {
		t.Fatalf("alice's commit of a past epoch: %v, want 409", err)
	}
	receive(t, alice, 1)

	// alice adds carol's phone; carol's laptop joins externally.
	if err := alice.Add(ctx, gid, carol.URI()); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, "carol", receive(t, carol, 1)[0], mimiclient.EventJoined, gid, "", "")
	expectEvent(t, "bob", receive(t, bob, 1)[0], mimiclient.EventCommit, gid, alice.URI(), "")
	info, err := carol.ExternalCommitInfo(ctx, gid)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := info.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var handed mimiclient.JoinInfo // as carol's phone hands it to the laptop
	if err := handed.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	if joined, err := laptop.JoinExternal(ctx, &handed); err != nil || !bytes.Equal(joined, gid) {
		t.Fatalf("carol's laptop joining externally: %x, %v", joined, err)
	}
	for name, c := range map[string]*mimiclient.Client{"alice": alice, "bob": bob, "carol": carol} {
		expectEvent(t, name, receive(t, c, 1)[0], mimiclient.EventCommit, gid, laptop.URI(), "")
	}

	// alice removes bob; his next request is refused as a non-member's.
	if err := alice.Remove(ctx, gid, "mimi://m.localhost/u/bob"); err != nil {
		t.Fatal(err)
	}
	err = bob.Send(ctx, gid, []byte("am I still here?"))
	var refusal *mimiclient.Error
	if !errors.As(err, &refusal) || refusal.Status != http.StatusNotFound || refusal.Code != moh.CodeNotFound {
		t.Fatalf("bob's request after his removal: %v, want 404 not_found", err)
	}
	expectEvent(t, "bob", receive(t, bob, 1)[0], mimiclient.EventRemoved, gid, alice.URI(), "")
	if len(bob.Groups()) != 0 {
		t.Fatalf("bob still holds groups %x", bob.Groups())
	}
	if err := bob.Send(ctx, gid, []byte("?")); !errors.Is(err, mimiclient.ErrUnknownGroup) {
		t.Fatalf("bob sending to a group he left: %v", err)
	}

	// alice continues from her state on disk.
	dir := alice.Dir()
	if err := alice.Close(); err != nil {
		t.Fatal(err)
	}
	alice, err = mimiclient.Open(dir, clientConfig("alice"))
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	for name, c := range map[string]*mimiclient.Client{"carol": carol, "laptop": laptop} {
		expectEvent(t, name, receive(t, c, 1)[0], mimiclient.EventCommit, gid, alice.URI(), "")
	}
	if err := laptop.Send(ctx, gid, []byte("hi from the laptop")); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*mimiclient.Client{"alice": alice, "carol": carol} {
		expectEvent(t, name, receive(t, c, 1)[0], mimiclient.EventMessage, gid, laptop.URI(), "hi from the laptop")
	}
	g, err := alice.Group(gid)
	if err != nil {
		t.Fatal(err)
	}
	var members []string
	for _, m := range g.Members {
		members = append(members, m.ClientURI)
	}
	if want := []string{alice.URI(), carol.URI(), laptop.URI()}; strings.Join(members, " ") != strings.Join(want, " ") {
		t.Fatalf("alice sees members %v, want %v", members, want)
	}
}

// TestReadmeMimictlSession runs the README's mimictl session against
// m.localhost, command by command through mimictl's code in-process, and
// compares what each prints with the README (group ids, which are random,
// compared as such; the README's provider localhost is m.localhost here).
func TestReadmeMimictlSession(t *testing.T) {
	startClientSite(t)
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "## Two users with `mimictl`")
	if !ok {
		t.Fatal("README has no mimictl section")
	}
	_, rest, ok = strings.Cut(rest, "```console\n")
	session, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("the mimictl section has no console block")
	}
	type alias struct{ user, password, state string }
	aliases := map[string]alias{}
	aliasRE := regexp.MustCompile(`^alias (\w+)='MIMI_USER=(\w+) MIMI_PASSWORD="([^"]*)" \./mimictl -state (\w+)'$`)
	gidRE := regexp.MustCompile(`\b[0-9a-f]{32}\b`)
	normalise := func(out string) string {
		out = strings.ReplaceAll(out, "mimi://m.localhost/", "mimi://localhost/")
		return strings.Join(strings.Fields(gidRE.ReplaceAllString(out, "<group>")), " ")
	}
	dir := t.TempDir()
	vars := map[string]string{}
	lines := strings.Split(strings.TrimSuffix(session, "\n"), "\n")
	commands := 0
	for i := 0; i < len(lines); i++ {
		cmd, ok := strings.CutPrefix(lines[i], "$ ")
		if !ok {
			t.Fatalf("README line %q is not a command or its output", lines[i])
		}
		var want []string
		for i+1 < len(lines) && !strings.HasPrefix(lines[i+1], "$ ") {
			i++
			want = append(want, lines[i])
		}
		if m := aliasRE.FindStringSubmatch(cmd); m != nil {
			if clientUsers[m[2]] != m[3] {
				t.Fatalf("the README's password of %s is not the test site's", m[2])
			}
			aliases[m[1]] = alias{user: m[2], password: m[3], state: filepath.Join(dir, m[4])}
			continue
		}
		if strings.HasPrefix(cmd, "go build ") || strings.HasPrefix(cmd, "export MIMI_GATEWAY=") {
			continue // the test runs mimictl's code with its own gateway and roots
		}
		assign := ""
		if v, inner, ok := strings.Cut(cmd, "=$("); ok {
			assign, cmd = v, strings.TrimSuffix(inner, ")")
		}
		words := strings.Fields(cmd)
		a, ok := aliases[words[0]]
		if !ok {
			t.Fatalf("README command %q runs no alias defined before it", cmd)
		}
		args := []string{"-state", a.state}
		for _, w := range words[1:] {
			if strings.HasPrefix(w, "$") {
				w = vars[w[1:]]
			}
			args = append(args, strings.ReplaceAll(w, "mimi://localhost/", "mimi://m.localhost/"))
		}
		environ := map[string]string{"MIMI_GATEWAY": "https://m.localhost:9443", "MIMI_USER": a.user, "MIMI_PASSWORD": a.password}
		var stdout, stderr bytes.Buffer
		status := cli.Run(t.Context(), args, cli.Env{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr,
			Getenv: func(k string) string { return environ[k] }, HTTPClient: clientHTTP()})
		commands++
		if assign != "" {
			vars[assign] = strings.TrimSpace(stdout.String())
		}
		printed := stdout.String() + stderr.String()
		if assign != "" {
			printed = stderr.String() // stdout went into the variable
		}
		got := normalise(printed)
		if exp := normalise(strings.Join(want, "\n")); got != exp {
			t.Fatalf("README command %q (exit %d) printed\n%s\nwant\n%s", cmd, status, got, exp)
		}
		if wantStatus := map[bool]int{true: 1, false: 0}[stderr.Len() > 0]; status != wantStatus {
			t.Fatalf("README command %q exited %d with stderr %q", cmd, status, stderr.String())
		}
	}
	if commands < 10 {
		t.Fatalf("the README session ran only %d mimictl commands", commands)
	}
}

// TestMimictlExternalJoin has carol's phone, a member, write the join
// information with `group export` to stdout and her laptop join with
// `group join -` from stdin, all through mimictl's code.
func TestMimictlExternalJoin(t *testing.T) {
	startClientSite(t)
	dir := t.TempDir()
	run := func(state string, stdin []byte, args ...string) (string, string) {
		t.Helper()
		environ := map[string]string{"MIMI_GATEWAY": "https://m.localhost:9443", "MIMI_USER": "carol",
			"MIMI_PASSWORD": clientUsers["carol"], "MIMI_STATE": filepath.Join(dir, state)}
		var stdout, stderr bytes.Buffer
		status := cli.Run(t.Context(), args, cli.Env{Stdin: bytes.NewReader(stdin), Stdout: &stdout, Stderr: &stderr,
			Getenv: func(k string) string { return environ[k] }, HTTPClient: clientHTTP()})
		if status != 0 {
			t.Fatalf("mimictl %v (%s): exit %d: %s", args, state, status, stderr.String())
		}
		return stdout.String(), stderr.String()
	}
	run("phone", nil, "client", "init", "-key-packages", "1", "mimi://m.localhost/d/carol/phone")
	run("laptop", nil, "client", "init", "mimi://m.localhost/d/carol/laptop")
	out, _ := run("phone", nil, "group", "create")
	gid := strings.TrimSpace(out)
	info, _ := run("phone", nil, "group", "export", gid, "-")
	if joined, _ := run("laptop", []byte(info), "group", "join", "-"); strings.TrimSpace(joined) != gid {
		t.Fatalf("group join printed %q, want %s", joined, gid)
	}
	// The phone has not seen the join: its commit is of a past epoch.
	var stdout, stderr bytes.Buffer
	environ := map[string]string{"MIMI_GATEWAY": "https://m.localhost:9443", "MIMI_USER": "carol",
		"MIMI_PASSWORD": clientUsers["carol"], "MIMI_STATE": filepath.Join(dir, "phone")}
	status := cli.Run(t.Context(), []string{"group", "update", gid}, cli.Env{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr,
		Getenv: func(k string) string { return environ[k] }, HTTPClient: clientHTTP()})
	if status != 1 || stdout.Len() != 0 || !strings.Contains(stderr.String(), "409 stale_epoch") ||
		!strings.Contains(stderr.String(), "run recv, then try again") {
		t.Fatalf("a commit of a past epoch: exit %d, stdout %q, stderr %q", status, stdout.String(), stderr.String())
	}
	if out, _ := run("phone", nil, "recv", "-wait", "5s"); out != "commit\t"+gid+"\tmimi://m.localhost/d/carol/laptop\t1\n" {
		t.Fatalf("the phone received %q", out)
	}
	run("laptop", nil, "send", gid, "from", "the", "laptop")
	if out, _ := run("phone", nil, "recv", "-wait", "5s"); out != "message\t"+gid+"\tmimi://m.localhost/d/carol/laptop\tfrom the laptop\n" {
		t.Fatalf("the phone received %q", out)
	}
	out, _ = run("laptop", nil, "group", "info", gid)
	want := "group " + gid + "\nepoch 1\nsuite 1\nmember 0 mimi://m.localhost/d/carol/phone\nmember 1 mimi://m.localhost/d/carol/laptop (self)\n"
	if out != want {
		t.Fatalf("group info printed\n%s\nwant\n%s", out, want)
	}
}

// goClientPair starts the client site and has alice (device dev) create
// a group and add bob (device dev), who joins it.
func goClientPair(t *testing.T, dev string) (alice, bob *mimiclient.Client, gid []byte) {
	t.Helper()
	startClientSite(t)
	alice = newGoClient(t, "alice", dev)
	bob = newGoClient(t, "bob", dev)
	gid, err := alice.CreateGroup(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Add(t.Context(), gid, bob.URI()); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, "bob", receive(t, bob, 1)[0], mimiclient.EventJoined, gid, "", "")
	return alice, bob, gid
}

// TestGoClientAddClaimsOnlyNewClients: alice's group holds bob's first
// client; bob has a laptop too, and carol none in the group. An Add that
// names a client or user already in the group, mixes a new user with a
// present user's new client, or names a client twice is refused before
// any KeyPackage is claimed: no client loses one (before, adding bob by
// user URI claimed a KeyPackage of each of his clients, the one in the
// group too, and threw that one away; and the other refusals came after
// the claims). Adding the laptop by its client URI claims the laptop's
// alone.
func TestGoClientAddClaimsOnlyNewClients(t *testing.T) {
	alice, bob, gid := goClientPair(t, "claims")
	laptop := newGoClient(t, "bob", "laptop")
	carol := newGoClient(t, "carol", "claims")
	ctx := t.Context()
	counts := func() map[string]int {
		t.Helper()
		out := make(map[string]int)
		for _, c := range []*mimiclient.Client{bob, laptop, carol} {
			n, err := c.PublishedKeyPackages(ctx)
			if err != nil {
				t.Fatal(err)
			}
			out[c.URI()] = n
		}
		return out
	}
	before := counts()
	for _, tc := range []struct {
		name    string
		targets []string
	}{
		{"a present user", []string{"mimi://m.localhost/u/bob"}},
		{"a present client", []string{bob.URI()}},
		{"a new user and a present user's new client", []string{"mimi://m.localhost/u/carol", laptop.URI()}},
		{"a client twice", []string{laptop.URI(), laptop.URI()}},
		{"a client and its user", []string{carol.URI(), "mimi://m.localhost/u/carol"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := alice.Add(ctx, gid, tc.targets...); err == nil {
				t.Fatalf("adding %v succeeded", tc.targets)
			}
			if got := counts(); fmt.Sprint(got) != fmt.Sprint(before) {
				t.Fatalf("available KeyPackages after the refused add: %v; want %v (none claimed)", got, before)
			}
		})
	}
	if err := alice.Add(ctx, gid, laptop.URI()); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, "bob's laptop", receive(t, laptop, 1)[0], mimiclient.EventJoined, gid, "", "")
	want := maps.Clone(before)
	want[laptop.URI()]--
	if got := counts(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("available KeyPackages after adding the laptop: %v; want %v", got, want)
	}
}

// TestGoClientLeave has bob leave a group with the Go client: his
// self-remove proposal reaches alice, whose commit must cover it (one that
// does not is refused while she has not received it), and bob, receiving
// the commit, forgets the group.
func TestGoClientLeave(t *testing.T) {
	alice, bob, gid := goClientPair(t, "leave")
	ctx := t.Context()

	if err := bob.Leave(ctx, gid); err != nil {
		t.Fatal(err)
	}
	// alice has not received the proposal: her commit leaves it out and
	// the Delivery Service refuses it.
	if err := alice.Update(ctx, gid); err == nil {
		t.Fatal("a commit that leaves bob's pending self-remove out was accepted")
	}
	expectEvent(t, "alice", receive(t, alice, 1)[0], mimiclient.EventProposal, gid, bob.URI(), "")
	if err := alice.Update(ctx, gid); err != nil {
		t.Fatalf("alice's commit covering bob's self-remove: %v", err)
	}
	expectEvent(t, "bob", receive(t, bob, 1)[0], mimiclient.EventRemoved, gid, alice.URI(), "")
	if _, err := bob.Group(gid); !errors.Is(err, mimiclient.ErrUnknownGroup) {
		t.Fatalf("bob still knows the group after leaving: %v", err)
	}
	g, err := alice.Group(gid)
	if err != nil || len(g.Members) != 1 {
		t.Fatalf("alice's group after bob left: %+v, %v; want alice alone", g, err)
	}
	// The group goes on without him.
	if err := alice.Send(ctx, gid, []byte("bob has left")); err != nil {
		t.Fatal(err)
	}
}

// TestGoClientBindingRenewal: alice renews her client binding at the
// gateway (POST /binding for the same signature key) and commits in a
// group she joined with the old one: her commit's new leaf carries the
// new binding, the Delivery Service checks it and takes the commit, and
// bob follows it.
func TestGoClientBindingRenewal(t *testing.T) {
	alice, bob, gid := goClientPair(t, "renew")
	ctx := t.Context()
	before := alice.BindingNotAfter()
	if err := alice.RenewBinding(ctx); err != nil {
		t.Fatal(err)
	}
	if alice.BindingNotAfter().Before(before) {
		t.Fatalf("the renewed binding ends at %v, before the first (%v)", alice.BindingNotAfter(), before)
	}
	if err := alice.Update(ctx, gid); err != nil {
		t.Fatalf("alice's commit with the renewed binding: %v", err)
	}
	expectEvent(t, "bob", receive(t, bob, 1)[0], mimiclient.EventCommit, gid, alice.URI(), "")
	if err := alice.Publish(ctx, 1, false); err != nil {
		t.Fatalf("publishing with the renewed binding: %v", err)
	}
}
