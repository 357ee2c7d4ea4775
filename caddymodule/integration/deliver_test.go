package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestDeliverMessage sends deliver_message from a.localhost to b.localhost
// over TLS 1.3, signed with a's keys: the first Welcome of a group makes a
// its hub at b, a retry under a new request id is answered alike, a
// client of another provider is answered as unknown, and a message for a
// group b does not know is 404.
func TestDeliverMessage(t *testing.T) {
	startCaddy(t)
	issuer := issuerOf(t, "a.localhost")
	alice := newMIMIClient(t, issuer, "alice", "phone", false)
	// The Welcome is for a KeyPackage of another client of a; b does not
	// read Welcomes, it routes them by the client ids of the request, and
	// here they name bob of b.localhost.
	joiner := newMIMIClient(t, issuer, "bob", "phone", false)
	bob := moh.ClientURI("b.localhost", "bob", "phone")
	gid := random32(t)[:16]
	m := alice.newGroup(t, gid)
	res, err := m.Commit([]*mls.Proposal{{Type: mls.ProposalAdd, KeyPackage: joiner.kp}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := peerClient(t, "a.localhost")
	ctx := context.Background()
	send := func(t *testing.T, msg *mls.MLSMessage, group []byte, to ...string) *provider.Answer {
		t.Helper()
		q := &moh.QueueingServiceRequest{GroupID: group, Message: *msg}
		for _, c := range to {
			q.ClientIDs = append(q.ClientIDs, []byte(c))
		}
		payload, err := wire.Marshal(q)
		if err != nil {
			t.Fatal(err)
		}
		ans, err := a.Send(ctx, "b.localhost", moh.DeliverMessage, payload)
		if err != nil {
			t.Fatal(err)
		}
		return ans
	}
	stranger := moh.ClientURI("c.localhost", "carol", "phone")
	for i := range 2 { // the second is a retry under a new request id
		ans := send(t, res.Welcome, gid, bob, stranger)
		if ans.Status != http.StatusOK || ans.Response.Type != moh.ResponseQueueing ||
			ans.Response.Queueing.Status != moh.QueueingInvalidClientQueueInfo ||
			len(ans.Response.Queueing.Unknown) != 1 || string(ans.Response.Queueing.Unknown[0]) != stranger {
			t.Fatalf("delivery %d of the Welcome: %d %+v", i+1, ans.Status, ans.Response)
		}
	}
	app, err := res.Next.Protect([]byte("hello b"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if ans := send(t, app, gid, bob); ans.Status != http.StatusOK || ans.Response.Queueing.Status != moh.QueueingOK {
		t.Fatalf("a message of the group: %d %+v", ans.Status, ans.Response)
	}
	if ans := send(t, app, random32(t)[:16], bob); ans.Status != http.StatusNotFound || ans.Response.Error.Code != moh.CodeNotFound {
		t.Fatalf("a message for an unknown group: %d %+v", ans.Status, ans.Response)
	}
}

// fetchQueue long-polls the local client API of c's provider for c's
// messages after the cursor, acting as c's user, for up to wait seconds.
func fetchQueue(t *testing.T, c *mimiClient, user string, after uint64, wait int) []localapi.Message {
	t.Helper()
	prov, _, _, err := moh.ParseClientURI([]byte(c.uri))
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodGet, "https://"+string(prov)+":9443/local/messages?wait="+strconv.Itoa(wait)+"&after="+
		strconv.FormatUint(after, 10)+"&client="+url.QueryEscape(c.uri), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Test-User", user)
	cl := client(tls.VersionTLS13)
	cl.Timeout = time.Duration(wait)*time.Second + time.Minute // only against a hang
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("fetching %s's queue: %d %x %v", c.uri, resp.StatusCode, body, err)
	}
	var list localapi.MessageList
	if err := wire.Unmarshal(body, &list, "MessageList"); err != nil {
		t.Fatal(err)
	}
	return list.Messages
}

// TestFanOutToPeer runs a group hosted on a.localhost with a member on
// b.localhost: a's DS accepts the add and the messages, its federation
// sender delivers them from the outbox to b over TLS 1.3, and bob, a
// client of b, finds the Welcome and then the message in his queue at b,
// in order, each once, and reads them; bob's reply goes to his own
// provider, which relays it to the hub, and reaches alice.
func TestFanOutToPeer(t *testing.T) {
	startCaddy(t)
	alice := newMIMIClient(t, issuerOf(t, "a.localhost"), "alice", "fanout", false)
	bob := newMIMIClientAt(t, issuerOf(t, "b.localhost"), "b.localhost", "bob", "fanout", false)

	// a's DS checks bob's binding with b's keys, fetched over loopback.
	gid := alice.hostGroupWith(t, bob)
	app, err := alice.m.Protect([]byte("hello from a"), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "send_message", alice.sign(t, moh.RequestBody{Type: moh.SendMessage, Message: *app}, 0))

	var got []localapi.Message
	deadline := time.Now().Add(30 * time.Second)
	for len(got) < 2 && time.Now().Before(deadline) {
		var after uint64
		if len(got) > 0 {
			after = got[len(got)-1].Seq
		}
		got = append(got, fetchQueue(t, bob, "bob", after, 10)...)
	}
	if len(got) != 2 {
		t.Fatalf("bob's queue at b holds %d messages, want the Welcome and the message", len(got))
	}
	for _, m := range got {
		if string(m.Sender) != "a.localhost" || string(m.GroupID) != string(gid) {
			t.Fatalf("queued message from %q for group %x, want a.localhost and the group", m.Sender, m.GroupID)
		}
	}
	welcome, err := mls.DecodeMLSMessage(got[0].Message)
	if err != nil || welcome.WireFormat != mls.WireFormatWelcome {
		t.Fatalf("first message is not the Welcome: %v", err)
	}
	if bob.m, err = mls.JoinFromWelcome(welcome.Welcome, mls.WelcomeOptions{KeyPackage: bob.kp, InitKey: bob.initKey,
		LeafKey: bob.leafKey, Signer: bob.signer}); err != nil {
		t.Fatalf("bob joins from the Welcome a delivered: %v", err)
	}
	msg, err := mls.DecodeMLSMessage(got[1].Message)
	if err != nil {
		t.Fatal(err)
	}
	if _, plain, err := bob.m.Unprotect(msg); err != nil || string(plain) != "hello from a" {
		t.Fatalf("bob reads %q, %v", plain, err)
	}
	// Nothing more comes: each was delivered once.
	if more := fetchQueue(t, bob, "bob", got[1].Seq, 1); len(more) != 0 {
		t.Fatalf("bob's queue got %d more messages", len(more))
	}

	// bob answers through his own provider: b does not host the group
	// and relays his request, unchanged, to the hub it recorded, a; a
	// accepts it and alice finds it in her queue at a.
	reply, err := bob.m.Protect([]byte("hello from b"), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, raw := get(t, client(tls.VersionTLS13), http.MethodPost, "https://b.localhost:9443/group_operation", "application/octet-stream",
		bob.sign(t, moh.RequestBody{Type: moh.SendMessage, Message: *reply}, 0))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("bob's send_message relayed by b: %d %x", resp.StatusCode, raw)
	}
	mine := fetchQueue(t, alice, "alice", 0, 10)
	if len(mine) != 1 || string(mine[0].Sender) != bob.uri {
		t.Fatalf("alice's queue at a holds %d messages, want bob's", len(mine))
	}
	in, err := mls.DecodeMLSMessage(mine[0].Message)
	if err != nil {
		t.Fatal(err)
	}
	if _, plain, err := alice.m.Unprotect(in); err != nil || string(plain) != "hello from b" {
		t.Fatalf("alice reads %q, %v", plain, err)
	}
	// bob leaves: his self-remove proposal goes to his own provider,
	// which relays it to the hub; alice commits it by reference; b gets
	// the commit for bob, and nothing of the group after it.
	prop, err := bob.m.Propose(&mls.Proposal{Type: mls.ProposalRemove, Removed: bob.m.LeafIndex()})
	if err != nil {
		t.Fatal(err)
	}
	resp, raw = get(t, client(tls.VersionTLS13), http.MethodPost, "https://b.localhost:9443/group_operation", "application/octet-stream",
		bob.sign(t, moh.RequestBody{Type: moh.SelfRemoveClient, Message: *prop}, 0))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("bob's self_remove_client relayed by b: %d %x", resp.StatusCode, raw)
	}
	ac, ref, err := alice.m.VerifyProposal(prop)
	if err != nil {
		t.Fatal(err)
	}
	leave, err := alice.m.Commit(nil, [][]byte{ref}, func([]byte) (*mls.AuthenticatedContent, error) { return ac, nil })
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "update_client covering bob's self-remove", alice.sign(t, groupUpdate(moh.UpdateClient, leave), 0))
	alice.m = leave.Next
	last := got[1].Seq
	var removal []localapi.Message
	for deadline := time.Now().Add(30 * time.Second); len(removal) == 0 && time.Now().Before(deadline); {
		removal = fetchQueue(t, bob, "bob", last, 10)
	}
	if len(removal) != 1 {
		t.Fatalf("bob's queue at b got %d messages after his leave, want the commit that removes him", len(removal))
	}
	if want, _ := wire.Marshal(leave.Commit); !bytes.Equal(removal[0].Message, want) {
		t.Fatal("bob's last message is not the commit that removes him")
	}
	after, err := alice.m.Protect([]byte("bob has left"), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "send_message after bob left", alice.sign(t, moh.RequestBody{Type: moh.SendMessage, Message: *after}, 0))
	if more := fetchQueue(t, bob, "bob", removal[0].Seq, 2); len(more) != 0 {
		t.Fatalf("bob got %d messages of the group after he left", len(more))
	}

	// A group b knows no hub for stays not_found there.
	stranger, err := alice.m.Protect([]byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	stranger.PrivateMessage.GroupID = []byte("a group b never heard of")
	resp, _ = get(t, client(tls.VersionTLS13), http.MethodPost, "https://b.localhost:9443/group_operation", "application/octet-stream",
		alice.sign(t, moh.RequestBody{Type: moh.SendMessage, Message: *stranger}, 0))
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("a request for a group b does not know: %d, want 404", resp.StatusCode)
	}
}

// postLocal posts v to path of host's local client API as user.
func postLocal(t *testing.T, host, user, path string, v wire.Marshaler) (int, []byte) {
	t.Helper()
	body, err := wire.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, "https://"+host+":9443/local"+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Test-User", user)
	resp, err := client(tls.VersionTLS13).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, raw
}

// TestClaimRemoteKeyPackages has bob, a client of b.localhost, claim
// alice's KeyPackage through his own provider's local API: b asks a with
// connection_key_packages (by user) or group_key_packages (by client),
// and a hands out its single-use KeyPackage once.
func TestClaimRemoteKeyPackages(t *testing.T) {
	startCaddy(t)
	issuer := issuerOf(t, "a.localhost")
	phone := newMIMIClient(t, issuer, "alice", "claimed-phone", false)
	laptop := newMIMIClient(t, issuer, "alice", "claimed-laptop", false)
	for _, c := range []*mimiClient{phone, laptop} {
		status, body := postLocal(t, "a.localhost", "alice", "/key_packages", &localapi.PublishRequest{ClientURI: []byte(c.uri),
			KeyPackages: []localapi.KeyPackageEntry{{KeyPackage: mustEncode(t, c.kp)}}})
		if status != http.StatusOK {
			t.Fatalf("publishing %s's KeyPackage at a: %d %x", c.uri, status, body)
		}
	}
	claim := func(target string) [][]byte {
		t.Helper()
		status, body := postLocal(t, "b.localhost", "bob", "/claim_key_packages",
			&localapi.ClaimRequest{CipherSuite: uint16(suite), Target: []byte(target)})
		var list localapi.KeyPackageList
		if status != http.StatusOK || wire.Unmarshal(body, &list, "KeyPackageList") != nil {
			t.Fatalf("claim of %s through b: %d %x", target, status, body)
		}
		var out [][]byte
		for _, e := range list.KeyPackages {
			out = append(out, e.KeyPackage)
		}
		return out
	}
	// By client: the phone's.
	if got := claim(phone.uri); len(got) != 1 || !bytes.Equal(got[0], mustEncode(t, phone.kp)) {
		t.Fatalf("claim of the phone got %d KeyPackages, want the phone's", len(got))
	}
	// By user: the laptop's only, the phone's is used up.
	if got := claim(moh.UserURI("a.localhost", "alice")); len(got) != 1 || !bytes.Equal(got[0], mustEncode(t, laptop.kp)) {
		t.Fatalf("claim of alice got %d KeyPackages, want the laptop's", len(got))
	}
	if got := claim(moh.UserURI("a.localhost", "alice")); len(got) != 0 {
		t.Fatalf("a second claim of alice got %d KeyPackages, want none left", len(got))
	}
}
