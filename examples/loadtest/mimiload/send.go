package main

import (
	"context"
	"crypto"
	"crypto/hpke"
	"crypto/rand"
	"fmt"
	"net/http"
	"runtime"
	"time"

	"github.com/caddy-mimi/caddy-mimi/examples/loadtest/internal/dscommit"
	"github.com/caddy-mimi/caddy-mimi/internal/mlstest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// The send mode: send_message requests (docs/protocol.md §5.4.1) of one
// member of a group hosted on b.localhost, each a fresh application
// PrivateMessage, which the DS checks (client signature, timestamp,
// membership, epoch) and delivers to the other members' queues in one
// durable write each.

// sendSuite is the cipher suite of the send mode's group.
const sendSuite = mls.X25519AES128GCMSHA256Ed25519

// sendClient is a client of b.localhost with a binding issued by b's key
// ring, as the local client API's POST /binding would issue it.
type sendClient struct {
	uri     string
	signer  crypto.Signer
	kp      *mls.KeyPackage
	leafKey hpke.PrivateKey
}

func newSendClient(issuer *binding.Issuer, user string) (*sendClient, error) {
	c, err := mlstest.NewClient(sendSuite, moh.ClientURI(issuer.Domains[0], user, "load"), mlstest.Options{
		// Within the gateway's max_key_package_lifetime (366 days by
		// default), as a real client's.
		Lifetime: mls.Lifetime{NotBefore: uint64(time.Now().Add(-time.Hour).Unix()), NotAfter: uint64(time.Now().Add(24 * time.Hour).Unix())},
		Issuer:   issuer, BindingNotAfter: time.Now().Add(24 * time.Hour)})
	if err != nil {
		return nil, err
	}
	return &sendClient{uri: c.Identity, signer: c.Signer, kp: c.KeyPackage, leafKey: c.LeafKey}, nil
}

// postDS sends a DSRequest to host's /group_operation and decodes the
// answer.
func postDS(ctx context.Context, t *target, host string, body []byte) error {
	a := t.do(ctx, http.MethodPost, t.url(host, "/group_operation"), body, nil)
	if a.err != nil {
		return a.err
	}
	r, ok := decodeAnswer(a.body)
	if a.status != http.StatusOK || !ok || r.Type == moh.ResponseError {
		return fmt.Errorf("status %d: %s %q", a.status, r.Error.Code, r.Error.Message)
	}
	return nil
}

// prepareSend creates a group on the receiver (b.localhost by default) of
// a sender and f.recipients other members, all clients of the receiver,
// and signs f.pool send_message requests of the sender.
func prepareSend(ctx context.Context, t *target, f *benchFlags) (*prepared, error) {
	ring, err := f.receiverRing(ctx)
	if err != nil {
		return nil, err
	}
	issuer := &binding.Issuer{Domains: []string{f.receiver}, Keys: ring}
	sender, m, err := hostedGroup(ctx, t, f, issuer, "")
	if err != nil {
		return nil, err
	}

	// The messages are protected one after the other (each takes the
	// sender's next ratchet generation), then signed on every CPU.
	t0 := time.Now()
	payload := make([]byte, 100)
	msgs := make([]*mls.MLSMessage, f.pool)
	for i := range msgs {
		if msgs[i], err = m.Protect(payload, nil); err != nil {
			return nil, fmt.Errorf("protecting message %d: %w", i, err)
		}
	}
	pool := make([][]byte, f.pool)
	errs := make([]error, f.pool)
	leaf := m.LeafIndex()
	parallel(f.pool, runtime.GOMAXPROCS(0), func(i int) {
		pool[i], errs[i] = ds.SignRequest(sendSuite, sender.signer, moh.RequestBody{Type: moh.SendMessage, Message: *msgs[i]},
			ds.ClientSignature(leaf, time.Now()))
	})
	for _, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("signing: %w", err)
		}
	}
	// The first one is sent before the run (not measured): it warms the
	// group's state cache.
	if err := postDS(ctx, t, f.receiver, pool[0]); err != nil {
		return nil, fmt.Errorf("first send_message: %w", err)
	}
	fmt.Printf("# send: a group of 1 sender and %d recipients on %s; %d send_message requests (%d-byte payloads, %d bytes each) protected and signed ahead of the run in %s\n",
		f.recipients, f.receiver, len(pool), len(payload), len(pool[1]), time.Since(t0).Round(time.Millisecond))
	url := t.url(f.receiver, "/group_operation")
	return &prepared{mode: "send", expected: http.StatusOK, cfg: runConfig{
		conc: f.conc, duration: f.duration,
		next: func(i int) (request, bool) {
			if i+1 >= len(pool) {
				return request{}, false
			}
			return request{method: http.MethodPost, url: url, body: pool[i+1]}, true
		},
	}, shape: request{method: http.MethodPost, body: pool[0], header: octetStream}}, nil
}

// hostedGroup creates a group on f.receiver's DS (create_group) of a
// client "<prefix>sender" and adds f.recipients others,
// "<prefix>recipient<i>" (one add_users commit), all clients of
// f.receiver bound by issuer. It returns the sender and its member state
// at the group's current epoch.
func hostedGroup(ctx context.Context, t *target, f *benchFlags, issuer *binding.Issuer, prefix string) (*sendClient, *mls.Member, error) {
	sender, err := newSendClient(issuer, prefix+"sender")
	if err != nil {
		return nil, nil, err
	}
	gid := make([]byte, 16)
	rand.Read(gid)
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: sendSuite, GroupID: gid, Leaf: &sender.kp.LeafNode,
		LeafKey: sender.leafKey, Signer: sender.signer})
	if err != nil {
		return nil, nil, err
	}
	gi, err := m.GroupInfo()
	if err != nil {
		return nil, nil, err
	}
	create, err := ds.SignRequest(sendSuite, sender.signer, moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{
		GroupID: gid, LeafNode: sender.kp.LeafNode,
		GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}}},
		ds.ClientSignature(0, time.Now()))
	if err != nil {
		return nil, nil, err
	}
	if err := postDS(ctx, t, f.receiver, create); err != nil {
		return nil, nil, fmt.Errorf("create_group: %w", err)
	}
	var adds []*mls.Proposal
	for i := range f.recipients {
		c, err := newSendClient(issuer, fmt.Sprintf("%srecipient%d", prefix, i))
		if err != nil {
			return nil, nil, err
		}
		adds = append(adds, &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: c.kp})
	}
	if len(adds) == 0 {
		return sender, m, nil
	}
	add, res, err := dscommit.Request(moh.AddUsers, m, sender.signer, mls.CommitOptions{ByValue: adds}, time.Now())
	if err != nil {
		return nil, nil, err
	}
	if err := postDS(ctx, t, f.receiver, add); err != nil {
		return nil, nil, fmt.Errorf("add_users: %w", err)
	}
	return sender, res.Next, nil
}
