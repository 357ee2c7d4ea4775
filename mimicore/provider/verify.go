package provider

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TimestampWindow is how far a request's timestamp may be from the
// receiver's clock (docs/protocol.md §4).
const TimestampWindow = 300 * time.Second

// PeerPolicy decides whether a sending provider may talk to us at all. It
// returns nil to allow.
type PeerPolicy func(sender string) error

// Verifier checks provider-signed requests in the order of
// docs/protocol.md §4, cheapest checks first: decode, request type,
// recipient, timestamp, peer policy, key, signature. The replay check is
// the caller's next step (see Replay), since it needs the signed digest.
type Verifier struct {
	// Domains are this gateway's own provider domains.
	Domains []string
	// Keys finds senders' verification keys.
	Keys KeySource
	// Peers, when set, refuses senders before any key is fetched.
	Peers PeerPolicy
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	ed edKeys // senders' Ed25519 keys, decoded and precomputed
}

// Verified is a provider request whose envelope checks all passed.
type Verified struct {
	Request *moh.ProviderRequest
	// Digest is SHA-256 of the signed bytes (every field but the
	// signature); the replay cache recognises retries by it.
	Digest [32]byte

	// inline is set while Inbound.Handle runs the request's Processor
	// (InlineReplay).
	inline *inlineReplay
}

// VerifyOptions describes the HTTP request that carried a provider request.
type VerifyOptions struct {
	// Source is the client IP of the HTTP request (trusted proxies
	// resolved); the zero value means unknown. A KeyFetcher budgets key
	// fetches per source (see FetchPolicy.FetchRate).
	Source netip.Addr
}

// Verify is VerifyWith with no options.
func (v *Verifier) Verify(ctx context.Context, raw []byte, want moh.ProviderRequestType) (*Verified, error) {
	return v.VerifyWith(ctx, raw, want, VerifyOptions{})
}

// VerifyWith decodes raw as a ProviderRequest for endpoint want and checks
// it. Every failure is a *moh.Error with the code the peer should see; a
// refused key fetch is backend_unavailable wrapping ErrFetchBudget.
func (v *Verifier) VerifyWith(ctx context.Context, raw []byte, want moh.ProviderRequestType, opts VerifyOptions) (*Verified, error) {
	req, err := moh.DecodeProviderRequest(raw) // malformed, or unsupported_version
	if err != nil {
		return nil, err
	}
	if req.RequestType != want {
		return nil, moh.Errorf(moh.CodeWrongRequestType, "request type %s posted to /%s", req.RequestType, want)
	}
	if !v.ownDomain(req.Recipient) {
		return nil, moh.Errorf(moh.CodeRecipientMismatch, "recipient %q is not served here", req.Recipient)
	}
	ts := unixTime(req.Timestamp)
	if d := v.now().Sub(ts); d > TimestampWindow || d < -TimestampWindow {
		return nil, moh.Errorf(moh.CodeStaleTimestamp, "timestamp is %s away from the receiver clock", d.Round(time.Second))
	}
	sender := string(req.Sender)
	if v.Peers != nil {
		if err := v.Peers(sender); err != nil {
			return nil, &moh.Error{Code: moh.CodeForbidden, Message: "sender provider is not allowed", Err: err}
		}
	}
	var key *moh.VerificationKey
	if sk, ok := v.Keys.(SourcedKeySource); ok {
		key, err = sk.VerificationKeyFrom(ctx, sender, req.KeyID, ts, LookupOptions(opts))
	} else {
		key, err = v.Keys.VerificationKey(ctx, sender, req.KeyID, ts)
	}
	switch {
	case errors.Is(err, ErrUnknownKey):
		return nil, &moh.Error{Code: moh.CodeUnknownKey, Message: "key_id is not a current key of the sender", Err: err}
	case errors.Is(err, ErrFetcherClosed), errors.Is(err, store.ErrClosed):
		// The key source is shutting down (a closed service.Service
		// answers store.ErrClosed): a transient refusal.
		return nil, &moh.Error{Code: moh.CodeBackendUnavailable, Message: "sender keys cannot be fetched now; retry later", Err: err}
	case errors.Is(err, ErrFetchBudget):
		return nil, &moh.Error{Code: moh.CodeBackendUnavailable, Message: "sender keys cannot be fetched now; retry later", Err: err}
	case err != nil:
		return nil, &moh.Error{Code: moh.CodeUnknownKey, Message: "sender keys could not be fetched", Err: err}
	}
	signed, err := req.SignedBytes()
	if err != nil {
		return nil, fmt.Errorf("encoding signed fields: %w", err)
	}
	if err := v.verifySignature(key, signed, req.Signature); err != nil {
		return nil, &moh.Error{Code: moh.CodeBadSignature, Message: "provider signature does not verify", Err: err}
	}
	return &Verified{Request: req, Digest: sha256.Sum256(signed)}, nil
}

// verifySignature is VerifyWithLabel under moh.ProviderRequestLabel, with
// the same verdicts, through the Verifier's cache of decoded Ed25519 keys.
func (v *Verifier) verifySignature(key *moh.VerificationKey, signed, sig []byte) error {
	if key.Scheme != moh.SchemeEd25519 || len(key.PublicKey) != ed25519.PublicKeySize {
		return VerifyWithLabel(key, moh.ProviderRequestLabel, signed, sig)
	}
	buf := signContentBuffers.Get().(*[]byte)
	defer signContentBuffers.Put(buf)
	msg, err := appendSignContent((*buf)[:0], moh.ProviderRequestLabel, signed)
	if err != nil {
		return err
	}
	*buf = msg // kept grown; the verification does not retain msg
	if !v.ed.verify(key.PublicKey, msg, sig) {
		return fmt.Errorf("verifying signature: %w", ErrBadSignature)
	}
	return nil
}

// signContentBuffers hold the SignContent encodings that verifySignature
// builds for one verification each.
var signContentBuffers = sync.Pool{New: func() any { return new([]byte) }}

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

func (v *Verifier) ownDomain(d []byte) bool {
	for _, own := range v.Domains {
		if own == string(d) {
			return true
		}
	}
	return false
}

// SignRequest fills in req's key id, signs it with key and returns the
// encoding ready to post.
func SignRequest(req *moh.ProviderRequest, key *PrivateKey) ([]byte, error) {
	req.KeyID = key.ID
	tbs, err := req.SignedBytes()
	if err != nil {
		return nil, fmt.Errorf("encoding provider request: %w", err)
	}
	sig, err := key.SignWithLabel(moh.ProviderRequestLabel, tbs)
	if err != nil {
		return nil, err
	}
	req.Signature = sig
	return wire.Marshal(req)
}
