package binding

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Why a check refused a leaf: every error of Checker wraps exactly one of
// these, inside an *Error.
var (
	// ErrMissing: the leaf carries no client binding extension.
	ErrMissing = errors.New("leaf has no client binding")
	// ErrMalformed: the extension does not decode as a ClientBinding.
	ErrMalformed = errors.New("client binding does not decode")
	// ErrBadClientURI: the leaf's credential is not a BasicCredential whose
	// identity is a MIMI client URI, so it names no provider.
	ErrBadClientURI = errors.New("leaf identity is not a MIMI client URI")
	// ErrExpired: the check time is after the binding's not_after.
	ErrExpired = errors.New("client binding expired")
	// ErrUnknownKey: key_id is not a key of the provider that covers the
	// check time, or the provider's keys could not be fetched.
	ErrUnknownKey = errors.New("client binding key is unknown")
	// ErrKeysUnavailable: the provider's keys cannot be fetched now (a
	// fetch budget is spent, or the fetcher is closed); retry later.
	ErrKeysUnavailable = errors.New("provider keys cannot be fetched now")
	// ErrBadSignature: the binding signature does not verify with the key.
	ErrBadSignature = errors.New("client binding signature does not verify")
)

// Error is a refused client binding. Kind is one of the sentinel errors
// above (errors.Is finds it), Err the cause when there is one.
type Error struct {
	// Kind is ErrMissing, ErrMalformed, ErrBadClientURI, ErrExpired,
	// ErrUnknownKey, ErrKeysUnavailable or ErrBadSignature.
	Kind error
	// ClientURI is the leaf's identity when it is a client URI, else "".
	ClientURI string
	// Err is the cause, for logs; nil when Kind says it all.
	Err error
}

// Error implements error.
func (e *Error) Error() string {
	msg := "checking client binding"
	if e.ClientURI != "" {
		msg += " of " + e.ClientURI
	}
	msg += ": " + e.Kind.Error()
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns Kind and, when set, Err.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// Code returns the DSError code for the refusal: forbidden for a missing or
// expired binding (the request is authenticated, the leaf is not allowed),
// malformed for an extension that does not decode or an identity that is
// not a client URI, unknown_key, bad_signature, and backend_unavailable
// when the keys cannot be fetched now.
func (e *Error) Code() moh.Code {
	switch e.Kind {
	case ErrMissing, ErrExpired:
		return moh.CodeForbidden
	case ErrMalformed, ErrBadClientURI:
		return moh.CodeMalformed
	case ErrUnknownKey:
		return moh.CodeUnknownKey
	case ErrKeysUnavailable:
		return moh.CodeBackendUnavailable
	case ErrBadSignature:
		return moh.CodeBadSignature
	}
	return moh.CodeForbidden
}

// DSError returns the refusal as the *moh.Error the DS answers with. Its
// message names the reason and the client URI, nothing secret.
func (e *Error) DSError() *moh.Error {
	msg := e.Kind.Error()
	if e.ClientURI != "" {
		msg += ": " + e.ClientURI
	}
	return &moh.Error{Code: e.Code(), Message: msg, Err: e}
}

// LocalKeys is where a Checker finds its own provider's verification keys;
// *provider.KeyRing implements it.
type LocalKeys interface {
	// Published returns the keys that have not expired at now.
	Published(now time.Time) []moh.VerificationKey
}

// Interface guards: the gateway's key ring and fetcher plug in directly.
var (
	_ LocalKeys                 = (*provider.KeyRing)(nil)
	_ provider.SourcedKeySource = (*provider.KeyFetcher)(nil)
)

// Checker checks the client bindings of leaves (PROFILE §6). A binding of a
// client of one of Domains is checked with Local's keys, without any fetch;
// any other provider's keys come from Remote, which fetches them through the
// provider's discovery with the budgets of docs/protocol.md §4.1.
//
// The check is on unless Unchecked is set. A Checker is safe for
// concurrent use when its key sources are.
type Checker struct {
	// Domains are the provider's own domains.
	Domains []string
	// Local holds the provider's own keys. Without it, bindings of the
	// provider's own clients are refused (ErrUnknownKey).
	Local LocalKeys
	// Remote finds other providers' keys: the gateway's
	// *provider.KeyFetcher, or the *service.Service holding it. When it is
	// a provider.SourcedKeySource, fetches are charged to the request's
	// source. Without it, bindings of other providers' clients are refused
	// (ErrUnknownKey).
	Remote provider.KeySource
	// Unchecked turns the check off: every leaf passes and the Check
	// methods return a nil *Bound. It exists only to replay recorded
	// third-party MLS transcripts, whose leaves carry no bindings; never
	// set it for a gateway that serves clients.
	Unchecked bool
}

// Bound is what a successful check established: the leaf's client URI is
// vouched for by its provider until NotAfter.
type Bound struct {
	// ClientURI is the leaf's BasicCredential identity.
	ClientURI string
	// Provider is the provider domain in ClientURI, which signed the
	// binding; fan-out routes the leaf's traffic there.
	Provider string
	// NotAfter is the binding's not_after.
	NotAfter time.Time
	// KeyID names the provider key that signed the binding.
	KeyID []byte
}

// CheckLeaf checks the client binding of a leaf in a group's tree at time
// at: the leaf's BasicCredential identity must be a client URI, the leaf
// must carry a binding extension that decodes, at must not be after its
// not_after, and its signature over (identity, signature key, not_after)
// must verify with the key key_id of the provider in the URI, a key that
// covers at. The cheap checks run first: nothing is fetched for a leaf
// that fails them. A refusal is an *Error.
//
// The Delivery Service calls it for every leaf that enters or changes a
// group (create, add, update, external join, and the committer's leaf of
// an UpdatePath) before it accepts the handshake; opts.Source is the
// request's client address, to which key fetches are charged. A blank
// leaf is refused with ErrMissing.
func (c *Checker) CheckLeaf(ctx context.Context, leaf mls.LeafView, at time.Time, opts provider.LookupOptions) (*Bound, error) {
	if c.Unchecked {
		return nil, nil
	}
	if leaf.IsBlank() {
		return nil, &Error{Kind: ErrMissing, Err: errors.New("blank leaf")}
	}
	cred := leaf.Credential()
	data, ok := leaf.Extensions().Find(ExtensionType)
	return c.check(ctx, &cred, leaf.SignatureKey(), data, ok, at, opts)
}

// CheckLeafNode is CheckLeaf for a leaf node not yet in a tree (a
// KeyPackage's leaf, the leaf of an Update proposal or UpdatePath, the
// creator's leaf of create_group). It does not change leaf.
func (c *Checker) CheckLeafNode(ctx context.Context, leaf *mls.LeafNode, at time.Time, opts provider.LookupOptions) (*Bound, error) {
	if c.Unchecked {
		return nil, nil
	}
	data, ok := leaf.Extensions.Find(ExtensionType)
	return c.check(ctx, &leaf.Credential, leaf.SignatureKey, data, ok, at, opts)
}

// CheckCommit checks the bindings of every leaf that a commit put into a
// group: next is the state the commit produced (from
// mls.GroupState.ApplyCommit) and info its CommitInfo. The leaves checked
// are those the commit added, those of the Update proposals it covered,
// and the committer's leaf when the commit has an UpdatePath (which covers
// update_client and an external join's new leaf). It stops at the first
// refusal, an *Error wrapped with the leaf index. The creator's leaf of
// create_group and KeyPackages are not in a commit: check them with
// CheckLeafNode.
func (c *Checker) CheckCommit(ctx context.Context, next *mls.GroupState, info *mls.CommitInfo, at time.Time, opts provider.LookupOptions) error {
	if c.Unchecked {
		return nil
	}
	var leaves []uint32
	for _, a := range info.Added {
		leaves = append(leaves, a.Leaf)
	}
	for _, p := range info.Proposals {
		if p.Proposal.Type == mls.ProposalUpdate && p.Sender.Type == mls.SenderMember {
			leaves = append(leaves, p.Sender.Index)
		}
	}
	if info.Path != nil {
		leaves = append(leaves, info.CommitterLeaf)
	}
	slices.Sort(leaves)
	for _, i := range slices.Compact(leaves) {
		leaf, _ := next.Member(i)
		if _, err := c.CheckLeaf(ctx, leaf, at, opts); err != nil {
			return fmt.Errorf("leaf %d: %w", i, err)
		}
	}
	return nil
}

// Verify checks a decoded binding b of clientURI to signatureKey at time at,
// as CheckLeaf does once it has found them in a leaf: for a binding that
// arrives without its leaf (the local client API showing a client its
// fresh binding). A refusal is an *Error.
func (c *Checker) Verify(ctx context.Context, clientURI, signatureKey []byte, b *ClientBinding, at time.Time, opts provider.LookupOptions) (*Bound, error) {
	if c.Unchecked {
		return nil, nil
	}
	prov, err := providerOf(clientURI)
	if err != nil {
		return nil, &Error{Kind: ErrBadClientURI, Err: err}
	}
	return c.verify(ctx, prov, string(clientURI), signatureKey, b, at, opts)
}

func (c *Checker) check(ctx context.Context, cred *mls.Credential, sigKey, data []byte, found bool, at time.Time, opts provider.LookupOptions) (*Bound, error) {
	if cred.Type != mls.CredentialBasic {
		return nil, &Error{Kind: ErrBadClientURI, Err: fmt.Errorf("credential type %d is not basic", cred.Type)}
	}
	prov, err := providerOf(cred.Identity)
	if err != nil {
		return nil, &Error{Kind: ErrBadClientURI, Err: err}
	}
	uri := string(cred.Identity)
	if !found {
		return nil, &Error{Kind: ErrMissing, ClientURI: uri}
	}
	var b ClientBinding
	if err := wire.Unmarshal(data, &b, "client binding"); err != nil {
		return nil, &Error{Kind: ErrMalformed, ClientURI: uri, Err: err}
	}
	return c.verify(ctx, prov, uri, sigKey, &b, at, opts)
}

// verify checks b for the client uri of provider prov, cheapest first:
// expiry, then the key, then the signature.
func (c *Checker) verify(ctx context.Context, prov, uri string, sigKey []byte, b *ClientBinding, at time.Time, opts provider.LookupOptions) (*Bound, error) {
	t := uint64(max(at.Unix(), 0))
	if t > b.NotAfter {
		return nil, &Error{Kind: ErrExpired, ClientURI: uri,
			Err: fmt.Errorf("not_after %d is %d s before the check time", b.NotAfter, t-b.NotAfter)}
	}
	key, kerr := c.key(ctx, prov, b.KeyID, at, opts)
	if kerr != nil {
		kerr.ClientURI = uri
		return nil, kerr
	}
	tbs, terr := SignedContent([]byte(uri), sigKey, b.NotAfter)
	if terr != nil {
		return nil, &Error{Kind: ErrMalformed, ClientURI: uri, Err: terr}
	}
	if verr := provider.VerifyWithLabel(key, Label, tbs, b.Signature); verr != nil {
		return nil, &Error{Kind: ErrBadSignature, ClientURI: uri, Err: verr}
	}
	return &Bound{ClientURI: uri, Provider: prov, NotAfter: time.Unix(int64(min(b.NotAfter, maxUnixSeconds)), 0),
		KeyID: append([]byte(nil), b.KeyID...)}, nil
}

// maxUnixSeconds is the last second of year 9999, the latest not_after a
// Bound reports (later values are not meaningful times).
const maxUnixSeconds = 253402300799

// key finds provider prov's verification key keyID covering at: the local
// keys for an own domain, else through Remote.
func (c *Checker) key(ctx context.Context, prov string, keyID []byte, at time.Time, opts provider.LookupOptions) (*moh.VerificationKey, *Error) {
	if slices.Contains(c.Domains, prov) {
		if c.Local == nil {
			return nil, &Error{Kind: ErrUnknownKey, Err: errors.New("no local keys configured")}
		}
		t := uint64(max(at.Unix(), 0))
		for _, k := range c.Local.Published(at) {
			if bytes.Equal(k.KeyID, keyID) {
				if t < k.NotBefore || t > k.NotAfter {
					return nil, &Error{Kind: ErrUnknownKey, Err: fmt.Errorf("local key %x does not cover the check time", keyID)}
				}
				return &k, nil
			}
		}
		return nil, &Error{Kind: ErrUnknownKey, Err: fmt.Errorf("local key %x", keyID)}
	}
	if c.Remote == nil {
		return nil, &Error{Kind: ErrUnknownKey, Err: fmt.Errorf("no key source for provider %s", prov)}
	}
	var key *moh.VerificationKey
	var err error
	if sk, ok := c.Remote.(provider.SourcedKeySource); ok {
		key, err = sk.VerificationKeyFrom(ctx, prov, keyID, at, opts)
	} else {
		key, err = c.Remote.VerificationKey(ctx, prov, keyID, at)
	}
	switch {
	case err == nil:
		return key, nil
	case errors.Is(err, provider.ErrFetchBudget), errors.Is(err, provider.ErrFetcherClosed), errors.Is(err, store.ErrClosed):
		return nil, &Error{Kind: ErrKeysUnavailable, Err: err}
	default:
		return nil, &Error{Kind: ErrUnknownKey, Err: err}
	}
}
