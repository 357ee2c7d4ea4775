// Package check validates the arguments of store methods, so that every
// backend refuses exactly the same inputs with store.ErrInvalid.
package check

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Domain checks a sender or peer domain.
func Domain(what, d string) error {
	if d == "" || len(d) > store.MaxDomainSize {
		return fmt.Errorf("%s is %d bytes, want 1..%d: %w", what, len(d), store.MaxDomainSize, store.ErrInvalid)
	}
	return nil
}

// ID checks a binary identifier.
func ID(what string, id []byte) error {
	if len(id) == 0 || len(id) > store.MaxIDSize {
		return fmt.Errorf("%s is %d bytes, want 1..%d: %w", what, len(id), store.MaxIDSize, store.ErrInvalid)
	}
	return nil
}

// PublicKey checks an encoded public key.
func PublicKey(k []byte) error {
	if len(k) == 0 || len(k) > store.MaxPublicKeySize {
		return fmt.Errorf("public key is %d bytes, want 1..%d: %w", len(k), store.MaxPublicKeySize, store.ErrInvalid)
	}
	return nil
}

// SignatureAnswer checks the answer recorded with a signature digest.
func SignatureAnswer(a store.SignatureAnswer) error {
	if len(a.Body) > store.MaxAnswerSize {
		return fmt.Errorf("signature answer is %d bytes, over the %d byte limit: %w", len(a.Body), store.MaxAnswerSize, store.ErrInvalid)
	}
	return nil
}

// Answer checks a replay-cache answer.
func Answer(a store.Answer) error {
	if len(a.Body) > store.MaxAnswerSize {
		return fmt.Errorf("answer body is %d bytes, over the %d byte limit: %w", len(a.Body), store.MaxAnswerSize, store.ErrInvalid)
	}
	return nil
}

// Validity checks that a key's validity is not empty.
func Validity(notBefore, notAfter time.Time) error {
	if notAfter.Before(notBefore) {
		return fmt.Errorf("key validity ends before it starts: %w", store.ErrInvalid)
	}
	return nil
}

// SigningKey checks the metadata of a signing key.
func SigningKey(k store.SigningKey) error {
	if err := ID("key id", k.KeyID); err != nil {
		return err
	}
	if err := PublicKey(k.PublicKey); err != nil {
		return err
	}
	if err := Validity(k.NotBefore, k.NotAfter); err != nil {
		return err
	}
	if !store.ValidFileName(k.File) {
		return fmt.Errorf("key file name %q is not a plain base name: %w", k.File, store.ErrInvalid)
	}
	if len(k.Sealed) > store.MaxSealedKeySize {
		return fmt.Errorf("sealed private key is %d bytes, over the %d byte limit: %w", len(k.Sealed), store.MaxSealedKeySize, store.ErrInvalid)
	}
	return nil
}

// Lease checks the arguments of AcquireLease and ReleaseLease; ttl is
// checked when positive is set.
func Lease(name, holder string, ttl time.Duration, positive bool) error {
	for _, v := range []struct{ what, s string }{{"lease name", name}, {"lease holder", holder}} {
		if v.s == "" || len(v.s) > store.MaxLeaseNameSize {
			return fmt.Errorf("%s is %d bytes, want 1..%d: %w", v.what, len(v.s), store.MaxLeaseNameSize, store.ErrInvalid)
		}
	}
	if positive && ttl <= 0 {
		return fmt.Errorf("lease ttl %s is not positive: %w", ttl, store.ErrInvalid)
	}
	return nil
}

// PeerKeys checks the key set of one fetch from domain.
func PeerKeys(domain string, keys []store.PeerKey) error {
	if err := Domain("peer domain", domain); err != nil {
		return err
	}
	seen := make(map[string]bool, len(keys))
	for i, k := range keys {
		if k.Domain != "" && k.Domain != domain {
			return fmt.Errorf("key %d names domain %q, not %q: %w", i, k.Domain, domain, store.ErrInvalid)
		}
		if err := ID("key id", k.KeyID); err != nil {
			return err
		}
		if seen[string(k.KeyID)] {
			return fmt.Errorf("key id %x appears twice: %w", k.KeyID, store.ErrInvalid)
		}
		seen[string(k.KeyID)] = true
		if err := PublicKey(k.PublicKey); err != nil {
			return err
		}
		if err := Validity(k.NotBefore, k.NotAfter); err != nil {
			return err
		}
	}
	return nil
}

// PeerFailure checks a failed-fetch record.
func PeerFailure(f store.PeerFailure) error {
	if err := Domain("peer domain", f.Domain); err != nil {
		return err
	}
	if len(f.Reason) > store.MaxReasonSize {
		return fmt.Errorf("failure reason is %d bytes, over the %d byte limit: %w", len(f.Reason), store.MaxReasonSize, store.ErrInvalid)
	}
	return nil
}

// ExpiryMillis converts an expiry to Unix milliseconds, rounding up so a
// record lives at least until t.
func ExpiryMillis(t time.Time) int64 {
	ms := t.UnixMilli()
	if t.Nanosecond()%int(time.Millisecond) != 0 {
		ms++
	}
	return ms
}

// KeepObjectMillis is the time, in Unix milliseconds rounded up, until
// which the object row of a's reservation is kept: a.KeepObject, or
// a.Expires when that is later (store.Attachment.KeepObject).
func KeepObjectMillis(a store.Attachment) int64 {
	return max(ExpiryMillis(a.KeepObject), ExpiryMillis(a.Expires))
}

// DeletedMillis is the bound ForgetObject compares an object row's keep
// time with: deleted in Unix milliseconds rounded down, or the largest
// value for a zero deleted, which no keep time passes
// (store.Attachments.ForgetObject).
func DeletedMillis(deleted time.Time) int64 {
	if deleted.IsZero() {
		return math.MaxInt64
	}
	return Millis(deleted)
}

// Millis converts a time to Unix milliseconds, rounding down.
func Millis(t time.Time) int64 { return t.UnixMilli() }

// Time converts Unix milliseconds back to a UTC time.
func Time(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// GroupID checks an MLS group id.
func GroupID(id []byte) error { return ID("group id", id) }

// Proposal checks a pending proposal.
func Proposal(p store.PendingProposal) error {
	if err := ID("proposal ref", p.Ref); err != nil {
		return err
	}
	if len(p.Message) == 0 || len(p.Message) > store.MaxProposalSize {
		return fmt.Errorf("proposal message is %d bytes, want 1..%d: %w", len(p.Message), store.MaxProposalSize, store.ErrInvalid)
	}
	return nil
}

// Joiners checks the joiners of an epoch commit: none without a Welcome,
// at most store.MaxJoiners, each ref a valid and distinct id and each key
// a valid public key.
func Joiners(welcome bool, js []store.Joiner) error {
	if len(js) == 0 {
		return nil
	}
	if !welcome {
		return fmt.Errorf("%d joiners without a Welcome: %w", len(js), store.ErrInvalid)
	}
	if len(js) > store.MaxJoiners {
		return fmt.Errorf("%d joiners, over the %d limit: %w", len(js), store.MaxJoiners, store.ErrInvalid)
	}
	seen := make(map[string]bool, len(js))
	for i, j := range js {
		if err := ID("joiner's KeyPackage ref", j.Ref); err != nil {
			return fmt.Errorf("joiner %d: %w", i, err)
		}
		if err := PublicKey(j.SignatureKey); err != nil {
			return fmt.Errorf("joiner %d: %w", i, err)
		}
		if seen[string(j.Ref)] {
			return fmt.Errorf("joiner %d: KeyPackage ref given twice: %w", i, store.ErrInvalid)
		}
		seen[string(j.Ref)] = true
	}
	return nil
}

// ClientURI checks a local client's URI: 1..MaxClientURISize bytes of
// UTF-8 (a URI is ASCII, and a backend may pass URIs as text, such as
// a JSON array).
func ClientURI(what, uri string) error {
	if uri == "" || len(uri) > store.MaxClientURISize {
		return fmt.Errorf("%s is %d bytes, want 1..%d: %w", what, len(uri), store.MaxClientURISize, store.ErrInvalid)
	}
	if !utf8.ValidString(uri) {
		return fmt.Errorf("%s is not UTF-8: %w", what, store.ErrInvalid)
	}
	return nil
}

// Suite checks an MLS cipher suite (0 is reserved).
func Suite(s uint16) error {
	if s == 0 {
		return fmt.Errorf("cipher suite 0 is reserved: %w", store.ErrInvalid)
	}
	return nil
}

// KeyPackageClaim checks the claims of one request, not its replay
// record, which is built inside the write (ReplayRecord checks it then).
func KeyPackageClaim(c store.KeyPackageClaim) error {
	if (len(c.Clients) == 0) == (c.Prefix == "") {
		return fmt.Errorf("a claim names clients or a prefix, not %d clients and a %d-byte prefix: %w",
			len(c.Clients), len(c.Prefix), store.ErrInvalid)
	}
	if c.Prefix != "" {
		return ClientURI("client prefix", c.Prefix)
	}
	if len(c.Clients) > store.MaxClaimClients {
		return fmt.Errorf("claim of %d clients, want at most %d: %w", len(c.Clients), store.MaxClaimClients, store.ErrInvalid)
	}
	for i, client := range c.Clients {
		if err := ClientURI("client", client); err != nil {
			return err
		}
		if slices.Contains(c.Clients[:i], client) {
			return fmt.Errorf("client %q named twice: %w", client, store.ErrInvalid)
		}
	}
	return nil
}

// PrefixEnd answers the end of the range [prefix, end) that holds exactly
// the strings that start with prefix, in bytewise order (SQLite's TEXT,
// PostgreSQL's COLLATE "C"): the prefix with its last byte plus one. A
// prefix ending in a 0xff byte would have no such end, but bytes above
// 0xf4 are not UTF-8, which ClientURI refuses; prefix is not empty.
func PrefixEnd(prefix string) string {
	end := []byte(prefix)
	end[len(end)-1]++
	return string(end)
}

// KeyPackages checks one publish of client's KeyPackages under lim.
func KeyPackages(client string, kps []store.KeyPackage, lim store.KeyPackageLimits) error {
	if err := ClientURI("client", client); err != nil {
		return err
	}
	if lim.PerClient < 0 || lim.PerClient > store.MaxKeyPackagesPerClient || lim.PerUser < 0 {
		return fmt.Errorf("KeyPackage limits %d per client (want 0..%d), %d per user: %w",
			lim.PerClient, store.MaxKeyPackagesPerClient, lim.PerUser, store.ErrInvalid)
	}
	if lim.PerUser > 0 || lim.UserPrefix != "" {
		if err := ClientURI("user prefix", lim.UserPrefix); err != nil {
			return err
		}
		if !strings.HasPrefix(client, lim.UserPrefix) || client == lim.UserPrefix {
			return fmt.Errorf("client %q is not under user prefix %q: %w", client, lim.UserPrefix, store.ErrInvalid)
		}
	}
	if len(kps) == 0 || len(kps) > store.MaxKeyPackagesPerClient {
		return fmt.Errorf("publishing %d KeyPackages, want 1..%d: %w", len(kps), store.MaxKeyPackagesPerClient, store.ErrInvalid)
	}
	refs := make(map[string]bool, len(kps))
	lastResort := map[uint16]bool{}
	for i, kp := range kps {
		if kp.Client != "" && kp.Client != client {
			return fmt.Errorf("KeyPackage %d names client %q, not %q: %w", i, kp.Client, client, store.ErrInvalid)
		}
		if err := Suite(kp.Suite); err != nil {
			return fmt.Errorf("KeyPackage %d: %w", i, err)
		}
		if err := ID("KeyPackageRef", kp.Ref); err != nil {
			return fmt.Errorf("KeyPackage %d: %w", i, err)
		}
		if refs[string(kp.Ref)] {
			return fmt.Errorf("KeyPackageRef %x appears twice: %w", kp.Ref, store.ErrInvalid)
		}
		refs[string(kp.Ref)] = true
		if len(kp.KeyPackage) == 0 || len(kp.KeyPackage) > store.MaxKeyPackageSize {
			return fmt.Errorf("KeyPackage %d is %d bytes, want 1..%d: %w", i, len(kp.KeyPackage), store.MaxKeyPackageSize, store.ErrInvalid)
		}
		if kp.LastResort {
			if lastResort[kp.Suite] {
				return fmt.Errorf("two last-resort KeyPackages for suite %d: %w", kp.Suite, store.ErrInvalid)
			}
			lastResort[kp.Suite] = true
		}
	}
	return nil
}

// Delivery checks a message for local queues.
func Delivery(d store.Delivery) error {
	if len(d.Recipients) == 0 || len(d.Recipients) > store.MaxAppendRecipients {
		return fmt.Errorf("%d recipients, want 1..%d: %w", len(d.Recipients), store.MaxAppendRecipients, store.ErrInvalid)
	}
	seen := make(map[string]bool, len(d.Recipients))
	for _, r := range d.Recipients {
		if err := ClientURI("recipient", r); err != nil {
			return err
		}
		if seen[r] {
			return fmt.Errorf("recipient %q appears twice: %w", r, store.ErrInvalid)
		}
		seen[r] = true
	}
	if len(d.GroupID) > store.MaxIDSize {
		return fmt.Errorf("group id is %d bytes, over the %d byte limit: %w", len(d.GroupID), store.MaxIDSize, store.ErrInvalid)
	}
	if len(d.Sender) > store.MaxClientURISize {
		return fmt.Errorf("sender is %d bytes, over the %d byte limit: %w", len(d.Sender), store.MaxClientURISize, store.ErrInvalid)
	}
	if len(d.Message) == 0 || len(d.Message) > store.MaxQueuedMessageSize {
		return fmt.Errorf("message is %d bytes, want 1..%d: %w", len(d.Message), store.MaxQueuedMessageSize, store.ErrInvalid)
	}
	if d.Limits.MaxMessages < 0 || d.Limits.MaxBytes < 0 {
		return fmt.Errorf("negative queue limits: %w", store.ErrInvalid)
	}
	if len(d.Dedup) != 0 && (len(d.Dedup) != 32 || d.DedupExpires.IsZero()) {
		return fmt.Errorf("dedup key of %d bytes (want 32) or without expiry: %w", len(d.Dedup), store.ErrInvalid)
	}
	return ReplayRecord(d.Replay)
}

// ReplayRecord checks a replay log entry written with another write; nil
// is none.
func ReplayRecord(r *store.ReplayRecord) error {
	if r == nil {
		return nil
	}
	if err := Domain("replay sender", r.Sender); err != nil {
		return err
	}
	if err := ID("replay request id", r.RequestID); err != nil {
		return err
	}
	return Answer(r.Answer)
}

// FetchLimit checks a Fetch bound and fills in its defaults.
func FetchLimit(l store.FetchLimit) (store.FetchLimit, error) {
	if l.Messages < 0 || l.Messages > store.MaxFetchMessages || l.Bytes < 0 {
		return l, fmt.Errorf("fetch limit of %d messages, %d bytes: want 0..%d messages and bytes >= 0: %w",
			l.Messages, l.Bytes, store.MaxFetchMessages, store.ErrInvalid)
	}
	if l.Messages == 0 {
		l.Messages = store.DefaultFetchMessages
	}
	if l.Bytes == 0 {
		l.Bytes = store.DefaultFetchBytes
	}
	return l, nil
}

// Fanout checks a Fanout: each Local entry as Delivery does, each Remote
// message within the outbox's limits, and MaxFanoutMessages in all.
func Fanout(f store.Fanout) error {
	if n := len(f.Local) + len(f.Remote); n > store.MaxFanoutMessages {
		return fmt.Errorf("fan-out of %d messages, over the %d limit: %w", n, store.MaxFanoutMessages, store.ErrInvalid)
	}
	if f.Group != nil {
		if err := GroupPost(*f.Group); err != nil {
			return fmt.Errorf("group post: %w", err)
		}
	}
	for i, d := range f.Local {
		if err := Delivery(d); err != nil {
			return fmt.Errorf("local delivery %d: %w", i, err)
		}
	}
	for i, m := range f.Remote {
		if err := OutboxMessage(m); err != nil {
			return fmt.Errorf("remote delivery %d: %w", i, err)
		}
	}
	if len(f.Dedup) != 0 && (len(f.Dedup) != 32 || f.DedupExpires.IsZero()) {
		return fmt.Errorf("dedup key of %d bytes (want 32) or without expiry: %w", len(f.Dedup), store.ErrInvalid)
	}
	return nil
}

// FanoutWithoutDedup refuses a Fanout with a Dedup key in a write other
// than Deliver, which alone takes one (store.Fanout.Dedup).
func FanoutWithoutDedup(f store.Fanout) error {
	if len(f.Dedup) != 0 {
		return fmt.Errorf("a dedup key outside Deliver: %w", store.ErrInvalid)
	}
	return nil
}

// GroupPost checks a message for a group's log.
func GroupPost(p store.GroupPost) error {
	if err := GroupID(p.GroupID); err != nil {
		return err
	}
	if len(p.Sender) > store.MaxClientURISize {
		return fmt.Errorf("sender is %d bytes, over the %d byte limit: %w", len(p.Sender), store.MaxClientURISize, store.ErrInvalid)
	}
	if len(p.Message) == 0 || len(p.Message) > store.MaxQueuedMessageSize {
		return fmt.Errorf("message is %d bytes, want 1..%d: %w", len(p.Message), store.MaxQueuedMessageSize, store.ErrInvalid)
	}
	if p.Except != "" {
		if err := ClientURI("except", p.Except); err != nil {
			return err
		}
	}
	join, err := Members("join", p.Join)
	if err != nil {
		return err
	}
	if _, err := Members("leave", p.Leave); err != nil {
		return err
	}
	if _, err := Members("member", p.Members); err != nil {
		return err
	}
	for _, c := range p.Leave {
		if join[c] {
			return fmt.Errorf("client %q both joins and leaves: %w", c, store.ErrInvalid)
		}
	}
	return nil
}

// Members checks a list of local group members (GroupPost.Join and
// Leave, GroupCreation.Members), named what in errors, and returns it as a
// set.
func Members(what string, clients []string) (map[string]bool, error) {
	if len(clients) > store.MaxGroupMembershipChanges {
		return nil, fmt.Errorf("%d %s clients, over the %d limit: %w", len(clients), what, store.MaxGroupMembershipChanges, store.ErrInvalid)
	}
	seen := make(map[string]bool, len(clients))
	for _, c := range clients {
		if err := ClientURI(what, c); err != nil {
			return nil, err
		}
		if seen[c] {
			return nil, fmt.Errorf("%s client %q appears twice: %w", what, c, store.ErrInvalid)
		}
		seen[c] = true
	}
	return seen, nil
}

// OutboxMessage checks a message for the outbox.
func OutboxMessage(m store.OutboxMessage) error {
	if err := Domain("sender", m.Sender); err != nil {
		return err
	}
	if err := Domain("destination", m.Destination); err != nil {
		return err
	}
	if err := GroupID(m.GroupID); err != nil {
		return err
	}
	if len(m.Recipients) == 0 || len(m.Recipients) > store.MaxOutboxRecipients {
		return fmt.Errorf("%d recipients, want 1..%d: %w", len(m.Recipients), store.MaxOutboxRecipients, store.ErrInvalid)
	}
	for i, r := range m.Recipients {
		if err := ClientURI("recipient", r); err != nil {
			return err
		}
		if slices.Contains(m.Recipients[:i], r) {
			return fmt.Errorf("recipient %q appears twice: %w", r, store.ErrInvalid)
		}
	}
	if len(m.Message) == 0 || len(m.Message) > store.MaxQueuedMessageSize {
		return fmt.Errorf("message is %d bytes, want 1..%d: %w", len(m.Message), store.MaxQueuedMessageSize, store.ErrInvalid)
	}
	return nil
}

// OutboxWrite checks a receipt for the outbox: each message as
// OutboxMessage does, at most MaxFanoutMessages, and the dedup key as
// Delivery does.
func OutboxWrite(w store.OutboxWrite) error {
	if len(w.Messages) == 0 || len(w.Messages) > store.MaxFanoutMessages {
		return fmt.Errorf("%d messages, want 1..%d: %w", len(w.Messages), store.MaxFanoutMessages, store.ErrInvalid)
	}
	for i, m := range w.Messages {
		if err := OutboxMessage(m); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
	}
	if len(w.Dedup) != 0 && (len(w.Dedup) != 32 || w.DedupExpires.IsZero()) {
		return fmt.Errorf("dedup key of %d bytes (want 32) or without expiry: %w", len(w.Dedup), store.ErrInvalid)
	}
	return ReplayRecord(w.Replay)
}

// MaxEpoch is the largest epoch a store accepts: epochs are kept as
// signed 64-bit integers (SQLite INTEGER, PostgreSQL BIGINT), and the
// next epoch must fit too.
const MaxEpoch = math.MaxInt64 - 1

// GroupInfo checks the size of a GroupInfo to store.
func GroupInfo(gi []byte) error {
	if len(gi) > store.MaxGroupInfoSize {
		return fmt.Errorf("group info is %d bytes, over the %d byte limit: %w", len(gi), store.MaxGroupInfoSize, store.ErrInvalid)
	}
	return nil
}

// EpochCommit checks the arguments of GroupStore.CommitEpoch but its
// Fanout, whose check depends on the backend's copy of it, and returns
// the group id.
func EpochCommit(c store.EpochCommit) ([]byte, error) {
	if c.Base == nil || c.Next == nil {
		return nil, fmt.Errorf("base and next state are required: %w", store.ErrInvalid)
	}
	id := c.Base.GroupID()
	if err := GroupID(id); err != nil {
		return nil, err
	}
	if string(c.Next.GroupID()) != string(id) || c.Next.Epoch() != c.Base.Epoch()+1 || c.Next.Epoch() > MaxEpoch {
		return nil, fmt.Errorf("next state is not the base's group at the next epoch: %w", store.ErrInvalid)
	}
	if err := GroupInfo(c.GroupInfo); err != nil {
		return nil, err
	}
	if err := Joiners(c.Welcome, c.Joiners); err != nil {
		return nil, err
	}
	if c.Pending < 0 || c.Pending > store.MaxPendingProposals {
		return nil, fmt.Errorf("%d pending proposals, want 0..%d: %w", c.Pending, store.MaxPendingProposals, store.ErrInvalid)
	}
	if c.ReInit != nil && (c.Delete || c.Welcome) {
		return nil, fmt.Errorf("a reinitializing commit neither deletes the group nor adds members: %w", store.ErrInvalid)
	}
	return id, nil
}

// ReInit returns the encoding of EpochCommit.ReInit that the backends
// keep (nil for none), or ErrInvalid when it does not encode or is larger
// than MaxReInitSize.
func ReInit(r *mls.ReInit) ([]byte, error) {
	if r == nil {
		return nil, nil
	}
	enc, err := wire.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encoding the ReInit proposal: %v: %w", err, store.ErrInvalid)
	}
	if len(enc) > store.MaxReInitSize {
		return nil, fmt.Errorf("ReInit proposal of %d bytes, want at most %d: %w", len(enc), store.MaxReInitSize, store.ErrInvalid)
	}
	return enc, nil
}

// ReInitRecord is GroupStore.ReInitOf's answer from a hosted group's row:
// its epoch and its stored ReInit proposal, as ReInit encoded it, or nil
// when the group was not reinitialized or was before its proposal was
// kept (ErrNotFound).
func ReInitRecord(epoch int64, enc []byte) (store.ReInitRecord, error) {
	if enc == nil {
		return store.ReInitRecord{}, fmt.Errorf("the group was not reinitialized, or before its ReInit was kept: %w", store.ErrNotFound)
	}
	r := new(mls.ReInit)
	if err := wire.Unmarshal(enc, r, "ReInit"); err != nil {
		return store.ReInitRecord{}, fmt.Errorf("decoding the stored ReInit proposal: %w", err)
	}
	return store.ReInitRecord{ReInit: r, Epoch: uint64(epoch)}, nil
}

// GroupCreation checks the arguments of GroupStore.CreateGroup and
// returns the group id.
func GroupCreation(c store.GroupCreation) ([]byte, error) {
	if c.State == nil {
		return nil, fmt.Errorf("no state: %w", store.ErrInvalid)
	}
	id := c.State.GroupID()
	if err := GroupID(id); err != nil {
		return nil, err
	}
	if err := Domain("hub", c.Hub); err != nil {
		return nil, err
	}
	if c.State.Epoch() > MaxEpoch {
		return nil, fmt.Errorf("epoch %d: %w", c.State.Epoch(), store.ErrInvalid)
	}
	if err := GroupInfo(c.GroupInfo); err != nil {
		return nil, err
	}
	if _, err := Members("member", c.Members); err != nil {
		return nil, err
	}
	return id, nil
}

// Attachment checks the fields of an attachment record that its writer
// provides; withObject: its object fields too (a copy takes the
// source's).
func Attachment(a store.Attachment, withObject bool) error {
	if err := GroupID(a.GroupID); err != nil {
		return err
	}
	if err := ClientURI("uploader", a.Uploader); err != nil {
		return err
	}
	if !withObject {
		return nil
	}
	if a.Object == "" || len(a.Object) > store.MaxObjectNameSize {
		return fmt.Errorf("object name is %d bytes, want 1..%d: %w", len(a.Object), store.MaxObjectNameSize, store.ErrInvalid)
	}
	if a.Size < 0 {
		return fmt.Errorf("negative attachment size %d: %w", a.Size, store.ErrInvalid)
	}
	if len(a.ContentHash) == 0 || len(a.ContentHash) > store.MaxContentHashSize {
		return fmt.Errorf("content hash is %d bytes, want 1..%d: %w", len(a.ContentHash), store.MaxContentHashSize, store.ErrInvalid)
	}
	return nil
}

// TokenChallenges checks the argument of store.TokenChallenges.AddTokenChallenges.
func TokenChallenges(cs []store.TokenChallenge) error {
	if len(cs) > store.MaxTokenChallenges {
		return fmt.Errorf("%d token challenges, over the %d limit: %w", len(cs), store.MaxTokenChallenges, store.ErrInvalid)
	}
	for _, c := range cs {
		if err := TokenChallengeDigest(c.Digest); err != nil {
			return err
		}
	}
	return nil
}

// TokenChallengeDigest checks a token challenge digest.
func TokenChallengeDigest(d []byte) error {
	if len(d) != store.TokenChallengeDigestSize {
		return fmt.Errorf("token challenge digest is %d bytes, want %d: %w", len(d), store.TokenChallengeDigestSize, store.ErrInvalid)
	}
	return nil
}
