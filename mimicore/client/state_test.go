package client

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// These tests exercise the state directory without a gateway: a client
// whose record is written as Init writes it, and groups built with
// package mls directly, as a gateway would have accepted them.

// testConfig points at a gateway that the tests never call.
var testConfig = Config{Gateway: "https://gateway.invalid", Local: "https://gateway.invalid/local"}

// newOffline creates the state of client mimi://a.example/d/<user>/phone in
// a new directory, with a binding whose signature no one checks here.
func newOffline(t *testing.T, user string) *Client {
	t.Helper()
	dir := filepath.Join(t.TempDir(), user)
	if err := os.MkdirAll(filepath.Join(dir, groupsDir), 0o700); err != nil {
		t.Fatal(err)
	}
	c, err := newClient(t.Context(), dir, testConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	signer, _, err := DefaultCipherSuite.GenerateSignatureKey()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := exportSigner(signer)
	if err != nil {
		t.Fatal(err)
	}
	b, err := wire.Marshal(&binding.ClientBinding{NotAfter: uint64(time.Now().Add(time.Hour).Unix()), KeyID: []byte{1}, Signature: []byte{2}})
	if err != nil {
		t.Fatal(err)
	}
	rec := &record{clientURI: []byte(moh.ClientURI("a.example", user, "phone")), suite: DefaultCipherSuite, sigKey: raw, binding: b,
		bindingIssued: uint64(time.Now().Unix())}
	if err := c.adopt(rec); err != nil {
		t.Fatal(err)
	}
	if err := c.saveRecord(rec); err != nil {
		t.Fatal(err)
	}
	return c
}

// reopen closes c and opens its directory again.
func reopen(t *testing.T, c *Client) *Client {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	n, err := Open(c.dir, testConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// keyPackage makes and keeps a KeyPackage of c, as Publish does before
// sending it.
func keyPackage(t *testing.T, c *Client) *mls.KeyPackage {
	t.Helper()
	kp, st, err := c.newKeyPackage(false)
	if err != nil {
		t.Fatal(err)
	}
	rec := c.rec.clone()
	rec.keyPackages = append(rec.keyPackages, st)
	if err := c.saveRecord(rec); err != nil {
		t.Fatal(err)
	}
	return kp
}

// pair makes a group of alice and bob: alice creates it and adds bob's
// KeyPackage, bob joins from the Welcome; both states are stored.
func pair(t *testing.T) (alice, bob *Client, gid []byte, welcome *mls.MLSMessage) {
	t.Helper()
	alice, bob = newOffline(t, "alice"), newOffline(t, "bob")
	gid = []byte("0123456789abcdef")
	creator := keyPackage(t, alice)
	st := alice.rec.keyPackages[0]
	leafKey, _, err := alice.deriveKey(st.leafSeed)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: DefaultCipherSuite, GroupID: gid, Leaf: &creator.LeafNode, LeafKey: leafKey, Signer: alice.signer})
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.Commit([]*mls.Proposal{{Type: mls.ProposalAdd, KeyPackage: keyPackage(t, bob)}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.storeMember(res.Next); err != nil {
		t.Fatal(err)
	}
	bst := bob.rec.keyPackages[0]
	initKey, _, _ := bob.deriveKey(bst.initSeed)
	bobLeaf, _, _ := bob.deriveKey(bst.leafSeed)
	var kp mls.KeyPackage
	if err := wire.Unmarshal(bst.keyPackage, &kp, "KeyPackage"); err != nil {
		t.Fatal(err)
	}
	bm, err := mls.JoinFromWelcome(res.Welcome.Welcome, mls.WelcomeOptions{KeyPackage: &kp, InitKey: initKey, LeafKey: bobLeaf, Signer: bob.signer})
	if err != nil {
		t.Fatal(err)
	}
	if err := bob.storeMember(bm); err != nil {
		t.Fatal(err)
	}
	return alice, bob, gid, res.Welcome
}

// protect has c encrypt text in group gid as Send does before the request
// leaves: the state is stored after the key is used.
func protect(t *testing.T, c *Client, gid []byte, text string) []byte {
	t.Helper()
	m, err := c.member(gid)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := m.Protect([]byte(text), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.storeMember(m); err != nil {
		t.Fatal(err)
	}
	enc, err := wire.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

// followEmptyCommit has committer's Member of group gid make an empty
// commit, which the test does not store for committer, and follower apply
// it as the gateway's queued message seq.
func followEmptyCommit(t *testing.T, committer, follower *Client, gid []byte, seq uint64) {
	t.Helper()
	m, err := committer.member(gid)
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.Commit(nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	commit, err := wire.Marshal(res.Commit)
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := follower.process(t.Context(), queued(seq, gid, committer.URI(), commit)); err != nil || ev.Kind != EventCommit {
		t.Fatalf("%s applying %s's commit: %+v, %v", follower.URI(), committer.URI(), ev, err)
	}
}

// queued is msg as the gateway queues it for a client, at seq.
func queued(seq uint64, gid []byte, sender string, msg []byte) *localapi.Message {
	return &localapi.Message{Seq: seq, GroupID: gid, Sender: []byte(sender), Message: msg}
}

func TestRecordRoundTrip(t *testing.T) {
	full := &record{clientURI: []byte("mimi://a.example/d/alice/phone"), suite: mls.X25519AES128GCMSHA256Ed25519,
		sigKey: bytes.Repeat([]byte{1}, 32), binding: []byte{9, 9}, cursor: 42,
		keyPackages: []storedKeyPackage{
			{ref: []byte{1}, keyPackage: []byte{2}, initSeed: []byte{3}, leafSeed: []byte{4}},
			{ref: []byte{5}, keyPackage: []byte{6}, initSeed: []byte{7}, leafSeed: []byte{8}, lastResort: true},
		},
		groups:   []storedGroup{{groupID: []byte("g1"), file: 0}, {groupID: []byte("g2"), file: 3}},
		nextFile: 4}
	for name, r := range map[string]*record{
		"empty": {clientURI: []byte("mimi://a.example/d/bob/phone"), suite: mls.X25519AES128GCMSHA256Ed25519, sigKey: []byte{1}, binding: []byte{1}},
		"full":  full,
	} {
		t.Run(name, func(t *testing.T) {
			enc, err := wire.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeRecord(enc)
			if err != nil {
				t.Fatal(err)
			}
			again, err := wire.Marshal(got)
			if err != nil || !bytes.Equal(again, enc) {
				t.Fatalf("re-encoding differs: %v", err)
			}
		})
	}
}

func TestRecordDecodeRejects(t *testing.T) {
	good := &record{clientURI: []byte("mimi://a.example/d/alice/phone"), suite: mls.X25519AES128GCMSHA256Ed25519,
		sigKey: []byte{1}, binding: []byte{1}, groups: []storedGroup{{groupID: []byte("g1"), file: 0}}, nextFile: 1}
	enc := func(edit func(*record)) []byte {
		r := good.clone()
		edit(r)
		b, err := wire.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	valid := enc(func(*record) {})
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"truncated", valid[:len(valid)-1]},
		{"trailing byte", append(slices.Clone(valid), 0)},
		{"other format", append([]byte{5}, valid[1:]...)},
		{"format 3 with republish_after", append([]byte{3}, valid[1:]...)},
		{"format 1 with binding_issued", append([]byte{1}, valid[1:]...)},
		{"unsupported suite", enc(func(r *record) { r.suite = 0x7777 })},
		{"group twice", enc(func(r *record) {
			r.groups = append(r.groups, storedGroup{groupID: []byte("g1"), file: 1})
			r.nextFile = 2
		})},
		{"two groups in one file", enc(func(r *record) { r.groups = append(r.groups, storedGroup{groupID: []byte("g2"), file: 0}) })},
		{"file not below next_file", enc(func(r *record) { r.nextFile = 0 })},
		{"empty group id", enc(func(r *record) { r.groups[0].groupID = nil })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodeRecord(tc.data); !errors.Is(err, ErrStateEncoding) {
				t.Fatalf("decodeRecord = %v, want ErrStateEncoding", err)
			}
		})
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	for _, data := range [][]byte{[]byte("first"), []byte("second, longer"), nil} {
		if err := writeFileAtomic(path, data); err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %q, %v; want %q", got, err, data)
		}
	}
	if err := writeFileAtomic(filepath.Join(dir, "missing", "f"), []byte("x")); err == nil {
		t.Fatal("writing into a missing directory succeeded")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "f" {
		t.Fatalf("the directory holds %v, want only f (no temporary files)", entries)
	}
}

// TestMkdirDurable: mkdirDurable creates a directory and its missing
// parents (mode 0700), accepts one that exists, and refuses a file in the
// way. That it syncs the parents cannot be observed short of a crash of
// the machine; this checks the directories it leaves.
func TestMkdirDurable(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, dir string
		ok        bool
	}{
		{"new", filepath.Join(base, "a"), true},
		{"new with missing parents", filepath.Join(base, "b", "c", "d"), true},
		{"existing", base, true},
		{"a file in the way", file, false},
		{"below a file", filepath.Join(file, "x"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := mkdirDurable(tc.dir)
			if (err == nil) != tc.ok {
				t.Fatalf("mkdirDurable(%s) = %v, want success %v", tc.dir, err, tc.ok)
			}
			if !tc.ok {
				return
			}
			fi, err := os.Stat(tc.dir)
			if err != nil || !fi.IsDir() {
				t.Fatalf("after mkdirDurable: %v, %v", fi, err)
			}
			if tc.dir != base && fi.Mode().Perm() != 0o700 {
				t.Fatalf("mode %v, want 0700", fi.Mode().Perm())
			}
		})
	}
}

func TestStateDirectoryLocked(t *testing.T) {
	c := newOffline(t, "alice")
	if _, err := Open(c.dir, testConfig); !errors.Is(err, ErrInUse) {
		t.Fatalf("opening a directory in use: %v, want ErrInUse", err)
	}
	c = reopen(t, c) // released by Close
	if c.URI() != "mimi://a.example/d/alice/phone" {
		t.Fatalf("reopened client is %s", c.URI())
	}
}

// TestOpenWaitsForLock: with Config.LockWait, OpenContext waits for a
// state directory another Client holds and opens it once released; it
// fails with ErrInUse when the wait is over or ctx is done first.
// Without the wait, an application had to write its own retry loop.
func TestOpenWaitsForLock(t *testing.T) {
	held := newOffline(t, "alice")
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		wait time.Duration
		want error
	}{
		{"no wait", t.Context(), 0, ErrInUse},
		{"wait over", t.Context(), 20 * time.Millisecond, ErrInUse},
		{"context done", canceled, time.Minute, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig
			cfg.LockWait = tc.wait
			if _, err := OpenContext(tc.ctx, held.dir, cfg); !errors.Is(err, ErrInUse) || !errors.Is(err, tc.want) {
				t.Fatalf("opening a directory in use: %v; want %v", err, tc.want)
			}
		})
	}
	t.Run("released while waiting", func(t *testing.T) {
		// The holder lets go while OpenContext waits (or before, on a
		// slow machine: then OpenContext opens at once).
		go func() {
			time.Sleep(200 * time.Millisecond)
			held.Close()
		}()
		cfg := testConfig
		cfg.LockWait = time.Minute
		c, err := OpenContext(t.Context(), held.dir, cfg)
		if err != nil {
			t.Fatalf("opening once released: %v", err)
		}
		c.Close()
	})
}

func TestOpenRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(dir string)
		cfg   Config
	}{
		{"no state", func(string) {}, testConfig},
		{"corrupt record", func(dir string) { os.WriteFile(filepath.Join(dir, stateFile), []byte{1, 2, 3}, 0o600) }, testConfig},
		{"bad gateway URL", func(string) {}, Config{Gateway: "ftp://x", Local: testConfig.Local}},
		{"bad local URL", func(string) {}, Config{Gateway: testConfig.Gateway, Local: "not a url"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(dir)
			if c, err := Open(dir, tc.cfg); err == nil {
				c.Close()
				t.Fatal("Open succeeded")
			}
		})
	}
}

// TestGroupsSurviveReopen stores both members of a group, reopens both
// clients, and checks that each continues where it stopped: the message
// keys used before the reopen are not used again (bob opens every
// message once, in order) and the group is the same.
func TestGroupsSurviveReopen(t *testing.T) {
	alice, bob, gid, _ := pair(t)
	before, err := alice.Group(gid)
	if err != nil {
		t.Fatal(err)
	}
	first := protect(t, alice, gid, "before")
	alice, bob = reopen(t, alice), reopen(t, bob)
	second := protect(t, alice, gid, "after")
	for i, msg := range [][]byte{first, second} {
		ev, err := bob.process(t.Context(), queued(uint64(i+1), gid, alice.URI(), msg))
		if err != nil || ev.Kind != EventMessage {
			t.Fatalf("bob processes message %d: %+v, %v", i, ev, err)
		}
		if want := []string{"before", "after"}[i]; string(ev.Data) != want || ev.Sender != alice.URI() {
			t.Fatalf("message %d: %q from %s, want %q from alice", i, ev.Data, ev.Sender, want)
		}
	}
	after, err := alice.Group(gid)
	if err != nil {
		t.Fatal(err)
	}
	if before.Epoch != after.Epoch || len(before.Members) != 2 || len(after.Members) != 2 || after.Members[1].ClientURI != bob.URI() {
		t.Fatalf("group before %+v, after reopening %+v", before, after)
	}
	// bob's state after opening the first message is on disk: reopened,
	// he cannot open it again (its key is gone), but opens new ones.
	bob = reopen(t, bob)
	if ev, err := bob.process(t.Context(), queued(3, gid, alice.URI(), first)); err != nil || ev.Kind != EventSkipped {
		t.Fatalf("bob opening a message twice: %+v, %v; want skipped", ev, err)
	}
	third := protect(t, alice, gid, "third")
	if ev, err := bob.process(t.Context(), queued(4, gid, alice.URI(), third)); err != nil || string(ev.Data) != "third" {
		t.Fatalf("bob after reopening: %+v, %v", ev, err)
	}
}

// TestProcessCommits has bob follow alice's commits from his queue, and
// forget the group, file included, when a commit removes him.
func TestProcessCommits(t *testing.T) {
	alice, bob, gid, _ := pair(t)
	commit := func(props ...*mls.Proposal) []byte {
		m, err := alice.member(gid)
		if err != nil {
			t.Fatal(err)
		}
		res, err := m.Commit(props, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := alice.storeMember(res.Next); err != nil {
			t.Fatal(err)
		}
		enc, err := wire.Marshal(res.Commit)
		if err != nil {
			t.Fatal(err)
		}
		return enc
	}
	update := commit()
	ev, err := bob.process(t.Context(), queued(1, gid, alice.URI(), update))
	if err != nil || ev.Kind != EventCommit || ev.Epoch != 2 || ev.Sender != alice.URI() {
		t.Fatalf("bob follows an update: %+v, %v", ev, err)
	}
	// The same commit again is of a past epoch.
	if ev, err := bob.process(t.Context(), queued(2, gid, alice.URI(), update)); err != nil || ev.Kind != EventSkipped {
		t.Fatalf("bob given a past commit: %+v, %v", ev, err)
	}
	bob = reopen(t, bob)
	if g, err := bob.Group(gid); err != nil || g.Epoch != 2 {
		t.Fatalf("bob's group after reopening: %+v, %v", g, err)
	}
	remove := commit(&mls.Proposal{Type: mls.ProposalRemove, Removed: 1})
	if ev, err := bob.process(t.Context(), queued(3, gid, alice.URI(), remove)); err != nil || ev.Kind != EventRemoved {
		t.Fatalf("bob removed: %+v, %v", ev, err)
	}
	if _, err := bob.Group(gid); !errors.Is(err, ErrUnknownGroup) {
		t.Fatalf("bob's group after his removal: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(bob.dir, groupsDir)); len(entries) != 0 {
		t.Fatalf("bob's group files after his removal: %v", entries)
	}
	bob = reopen(t, bob)
	if len(bob.Groups()) != 0 {
		t.Fatal("bob's record still names the group after reopening")
	}
}

func TestProcessSkips(t *testing.T) {
	alice, bob, gid, welcome := pair(t)
	msg := protect(t, alice, gid, "hi")
	wenc, err := wire.Marshal(welcome)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		qm   *localapi.Message
	}{
		{"not an MLSMessage", queued(1, gid, alice.URI(), []byte{1, 2, 3})},
		{"queued for another group", queued(1, []byte("another group id"), alice.URI(), msg)},
		{"of an unknown group", queued(1, nil, alice.URI(), msg)},
		{"a Welcome to a group bob is in", queued(1, gid, alice.URI(), wenc)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := bob.process(t.Context(), tc.qm)
			if err != nil || ev.Kind != EventSkipped || ev.Err == nil {
				t.Fatalf("process = %+v, %v; want skipped with a reason", ev, err)
			}
		})
	}
}

// TestOpenRemovesOrphans: a group file that no record names (a crash
// between writing it and the record) is deleted on Open, and the groups
// that are named stay.
func TestOpenRemovesOrphans(t *testing.T) {
	alice, _, gid, _ := pair(t)
	orphan := groupPath(alice.dir, 99)
	if err := os.WriteFile(orphan, []byte("left by a crash"), 0o600); err != nil {
		t.Fatal(err)
	}
	alice = reopen(t, alice)
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("orphan group file still there: %v", err)
	}
	if _, err := alice.Group(gid); err != nil {
		t.Fatalf("the named group after removing orphans: %v", err)
	}
}

// TestOpenRemovesTemporaryFiles: a kill -9 inside writeFileAtomic, after
// the temporary file was written and before its rename, leaves the
// temporary file: of the client record (the signature key and the
// KeyPackages' private keys) or of a group (its epoch secrets). Open
// removes both, so that keys the client deleted since do not stay on disk.
func TestOpenRemovesTemporaryFiles(t *testing.T) {
	for _, tc := range []struct {
		name string
		dir  func(c *Client) string
	}{
		{"record", func(c *Client) string { return c.dir }},
		{"group", func(c *Client) string { return filepath.Join(c.dir, groupsDir) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alice, _, gid, _ := pair(t)
			data, err := os.ReadFile(filepath.Join(alice.dir, stateFile))
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.CreateTemp(tc.dir(alice), ".tmp-*") // as writeFileAtomic names it
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(data); err != nil {
				t.Fatal(err)
			}
			f.Close()
			alice = reopen(t, alice)
			if _, err := os.Stat(f.Name()); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("temporary file %s still there after Open: %v", filepath.Base(f.Name()), err)
			}
			if _, err := alice.Group(gid); err != nil {
				t.Fatalf("the group after removing temporary files: %v", err)
			}
		})
	}
}

// TestMessageOfTheEpochBeforeOwnCommit: bob sends in epoch 1 while alice
// commits epoch 2. alice, reopened from disk, still opens bob's message
// with the Member of epoch 1 she kept; once a message of epoch 2 arrives
// she drops it, so epoch 1's keys are gone, also after a reopen.
func TestMessageOfTheEpochBeforeOwnCommit(t *testing.T) {
	alice, bob, gid, _ := pair(t)
	early := protect(t, bob, gid, "sent in epoch 1")
	tooLate := protect(t, bob, gid, "also sent in epoch 1")
	m, err := alice.member(gid)
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.Commit(nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// As Client.commit stores an accepted commit.
	if err := alice.storeGroup(&group{cur: res.Next, prev: m}); err != nil {
		t.Fatal(err)
	}
	alice = reopen(t, alice)
	if ev, err := alice.process(t.Context(), queued(1, gid, bob.URI(), early)); err != nil || ev.Kind != EventMessage ||
		string(ev.Data) != "sent in epoch 1" || ev.Sender != bob.URI() {
		t.Fatalf("alice opening bob's message of the epoch before her commit: %+v, %v", ev, err)
	}
	commit, err := wire.Marshal(res.Commit)
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := bob.process(t.Context(), queued(1, gid, alice.URI(), commit)); err != nil || ev.Kind != EventCommit {
		t.Fatalf("bob following alice's commit: %+v, %v", ev, err)
	}
	later := protect(t, bob, gid, "sent in epoch 2")
	if ev, err := alice.process(t.Context(), queued(2, gid, bob.URI(), later)); err != nil || string(ev.Data) != "sent in epoch 2" {
		t.Fatalf("alice opening bob's message of epoch 2: %+v, %v", ev, err)
	}
	alice = reopen(t, alice)
	g, err := alice.loadGroup(gid)
	if err != nil {
		t.Fatal(err)
	}
	if g.prev != nil {
		t.Fatal("alice still keeps epoch 1's Member after a message of epoch 2")
	}
	// The gateway never queues it so late; had it, epoch 1 is gone.
	if ev, err := alice.process(t.Context(), queued(3, gid, bob.URI(), tooLate)); err != nil || ev.Kind != EventSkipped {
		t.Fatalf("alice given a message of epoch 1 after one of epoch 2: %+v, %v; want skipped", ev, err)
	}
}

func TestGroupFileDecodeRejects(t *testing.T) {
	alice, _, gid, _ := pair(t)
	m, err := alice.member(gid)
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.Commit(nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	enc := func(g *group) []byte {
		b, err := encodeGroup(g)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	valid := enc(&group{cur: res.Next, prev: m})
	if g, err := decodeGroup(valid); err != nil || g.prev == nil || g.cur.State().Epoch() != 2 || len(g.pending) != 0 {
		t.Fatalf("decoding a valid group file: %+v, %v", g, err)
	}
	// A file of format 2 has no kept attachments, no pending next epoch,
	// no older epochs and no joining mark (the last four bytes, an empty
	// vector, an absent optional, an empty vector and a zero, are format
	// 3's), one of format 1 no pending proposals either (the byte before).
	v2 := append([]byte{groupFormatV2}, valid[1:len(valid)-4]...)
	if g, err := decodeGroup(v2); err != nil || g.prev == nil || g.cur.State().Epoch() != 2 || len(g.pending) != 0 {
		t.Fatalf("decoding a group file of format 2: %+v, %v", g, err)
	}
	v1 := append([]byte{groupFormatV1}, valid[1:len(valid)-5]...)
	if g, err := decodeGroup(v1); err != nil || g.prev == nil || g.cur.State().Epoch() != 2 || len(g.pending) != 0 {
		t.Fatalf("decoding a group file of format 1: %+v, %v", g, err)
	}
	// Kept attachment secrets survive the round trip.
	k := keptAttachment{sender: 7, nonce: []byte("nonce"), hash: []byte("hash"), secret: []byte("secret")}
	if g, err := decodeGroup(enc(&group{cur: res.Next, attachments: []keptAttachment{k, k}})); err != nil || len(g.attachments) != 2 ||
		g.attachments[1].sender != 7 || string(g.attachments[1].secret) != "secret" || string(g.attachments[1].hash) != "hash" {
		t.Fatalf("decoding a group file with kept attachments: %+v, %v", g, err)
	}
	// A pending next epoch survives the round trip.
	if g, err := decodeGroup(enc(&group{cur: m, next: res.Next})); err != nil || g.next == nil || g.next.State().Epoch() != 2 {
		t.Fatalf("decoding a group file with a pending next epoch: %+v, %v", g, err)
	}
	// The joining mark survives the round trip.
	if g, err := decodeGroup(enc(&group{cur: m, joining: true})); err != nil || !g.joining {
		t.Fatalf("decoding a group file with the joining mark: %+v, %v", g, err)
	}
	// Older epochs' Members survive the round trip.
	res3, err := res.Next.Commit(nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if g, err := decodeGroup(enc(&group{cur: res3.Next, prev: res.Next, older: []*mls.Member{m}})); err != nil || len(g.older) != 1 ||
		g.older[0].State().Epoch() != 1 || g.prev.State().Epoch() != 2 {
		t.Fatalf("decoding a group file with an older epoch's member: %+v, %v", g, err)
	}
	tooManyKept := make([]keptAttachment, maxKeptAttachments+1)
	for i := range tooManyKept {
		tooManyKept[i] = k
	}
	// Pending proposals survive the round trip.
	withPending := enc(&group{cur: res.Next, pending: [][]byte{[]byte("proposal one"), []byte("proposal two")}})
	if g, err := decodeGroup(withPending); err != nil || len(g.pending) != 2 || string(g.pending[1]) != "proposal two" {
		t.Fatalf("decoding a group file with pending proposals: %+v, %v", g, err)
	}
	tooMany := make([][]byte, maxPendingProposals+1)
	for i := range tooMany {
		tooMany[i] = []byte{1}
	}
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"truncated", valid[:len(valid)-1]},
		{"trailing byte", append(slices.Clone(valid), 0)},
		{"other format", append([]byte{4}, valid[1:]...)},
		{"joining mark other than 0 or 1", append(slices.Clone(valid[:len(valid)-1]), 2)},
		{"too many pending proposals", enc(&group{cur: res.Next, pending: tooMany})},
		{"too many kept attachments", enc(&group{cur: res.Next, attachments: tooManyKept})},
		{"previous member of the same epoch", enc(&group{cur: m, prev: m})},
		{"previous member of a later epoch", enc(&group{cur: m, prev: res.Next})},
		{"pending next member of the same epoch", enc(&group{cur: m, next: m})},
		{"older member without a previous one", enc(&group{cur: res3.Next, older: []*mls.Member{m}})},
		{"older member of the previous one's epoch", enc(&group{cur: res3.Next, prev: res.Next, older: []*mls.Member{res.Next}})},
		{"too many older members", enc(&group{cur: res3.Next, prev: res.Next, older: []*mls.Member{m, m, m, m}})},
		{"pending next member of an earlier epoch", enc(&group{cur: res.Next, next: m})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodeGroup(tc.data); !errors.Is(err, ErrStateEncoding) {
				t.Fatalf("decodeGroup = %v, want ErrStateEncoding", err)
			}
		})
	}
}

// heldRecord writes c's record, with a republish due and republish_after
// encoded as after (Unix nanoseconds, 0: none), to c's state file as it
// is, closes c and returns its directory.
func heldRecord(t *testing.T, c *Client, after uint64) string {
	t.Helper()
	r := c.rec.clone()
	r.republishDue = true
	enc, err := wire.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	// republish_after is the last field.
	binary.BigEndian.PutUint64(enc[len(enc)-8:], after)
	if err := writeFileAtomic(filepath.Join(c.dir, stateFile), enc); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return c.dir
}

// TestRepublishHoldBounds: a republish hold read from the state is kept
// as the absolute time it is when it lies within MaxRetryAfter of the
// clock, whatever Config.MaxRetryWait (which bounds waits within a call),
// brought back to MaxRetryAfter when further ahead (a clock set back, a
// damaged file), and gone when over.
func TestRepublishHoldBounds(t *testing.T) {
	now := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	ns := func(d time.Duration) uint64 { return uint64(now.Add(d).UnixNano()) }
	for _, tc := range []struct {
		name    string
		after   uint64
		maxWait time.Duration
		want    time.Duration
	}{
		{"none", 0, 0, 0},
		{"minutes", ns(2*time.Minute + 500*time.Millisecond), 0, 2*time.Minute + 500*time.Millisecond},
		{"hours, past the default MaxRetryWait", ns(12 * time.Hour), 0, 12 * time.Hour},
		{"hours, past MaxRetryWait", ns(12 * time.Hour), time.Minute, 12 * time.Hour},
		{"hours, negative MaxRetryWait", ns(12 * time.Hour), -1, 12 * time.Hour},
		{"at MaxRetryAfter", ns(MaxRetryAfter), 0, MaxRetryAfter},
		{"past MaxRetryAfter", ns(MaxRetryAfter + time.Second), 0, MaxRetryAfter},
		{"past the range of time", math.MaxUint64, 0, MaxRetryAfter},
		{"over", ns(-time.Second), 0, 0},
		{"ending now", ns(0), 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := heldRecord(t, newOffline(t, "bob"), tc.after)
			cfg := testConfig
			cfg.Now, cfg.MaxRetryWait = func() time.Time { return now }, tc.maxWait
			c, err := Open(dir, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := c.RepublishHeld(); got != tc.want {
				t.Fatalf("the republish is held for %v; want %v", got, tc.want)
			}
		})
	}
}

// TestRepublishHoldDroppedWhenOver: a hold is saved as the absolute time
// it is while it lasts, and dropped by the first save after it is over.
func TestRepublishHoldDroppedWhenOver(t *testing.T) {
	now := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	end := now.Add(2 * time.Minute)
	dir := heldRecord(t, newOffline(t, "bob"), uint64(end.UnixNano()))
	clock := now
	cfg := testConfig
	cfg.Now = func() time.Time { return clock }
	c, err := Open(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		name string
		at   time.Time
		want time.Time
	}{
		{"while it lasts", end.Add(-time.Second), end},
		{"once over", end, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock = tc.at
			if err := c.saveRecord(c.rec.clone()); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(filepath.Join(dir, stateFile))
			if err != nil {
				t.Fatal(err)
			}
			r, err := decodeRecord(data)
			if err != nil {
				t.Fatal(err)
			}
			if !r.republishAfter.Equal(tc.want) {
				t.Fatalf("saved hold %v; want %v", r.republishAfter, tc.want)
			}
		})
	}
}

// TestRecordFormat3: a state directory written before the republish hold
// was stored (client record format 3, built here from one of format 4
// without its last field) opens, its republish due kept and held by
// nothing, and is written in format 4 by the next save.
func TestRecordFormat3(t *testing.T) {
	c := newOffline(t, "bob")
	r := c.rec.clone()
	r.republishDue = true
	enc, err := wire.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	v3 := append([]byte{3}, enc[1:len(enc)-8]...)
	if err := writeFileAtomic(filepath.Join(c.dir, stateFile), v3); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c, err = Open(c.dir, testConfig)
	if err != nil {
		t.Fatalf("opening a state of format 3: %v", err)
	}
	defer c.Close()
	if !c.rec.republishDue || !c.rec.republishAfter.IsZero() || c.RepublishHeld() != 0 {
		t.Fatalf("format 3: republish due %v, hold %v; want due, none", c.rec.republishDue, c.rec.republishAfter)
	}
	if err := c.saveRecord(c.rec.clone()); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(c.dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	if data[0] != 4 || !bytes.Equal(data[1:len(data)-8], v3[1:]) {
		t.Fatalf("saved again as format %d; want 4, the same fields and republish_after", data[0])
	}
}
