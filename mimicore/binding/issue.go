package binding

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
)

// ErrNotOwnProvider means a binding was asked for a client URI whose
// provider is not one of the issuer's domains: a provider vouches only for
// its own clients.
var ErrNotOwnProvider = errors.New("client URI does not name this provider")

// SigningKeys is where an Issuer finds the key to sign with;
// *provider.KeyRing implements it.
type SigningKeys interface {
	// Current returns the key that signs at now.
	Current(now time.Time) (*provider.PrivateKey, error)
}

var _ SigningKeys = (*provider.KeyRing)(nil) // interface guard

// Issuer issues client bindings to the clients of its provider's own
// domains (PROFILE §6: through the gateway's local client API).
type Issuer struct {
	// Domains are the provider's own domains; only client URIs naming one
	// of them get a binding.
	Domains []string
	// Keys holds the provider's signing keys.
	Keys SigningKeys
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Issue signs a binding of clientURI (a client URI of one of i.Domains) to
// the leaf signature key signatureKey, valid until notAfter, with the key
// that signs now. The binding cannot outlive its key, since peers stop
// finding a key once it expires: its not_after is the earlier of notAfter
// and the key's not_after, in whole seconds (notAfter is rounded down). The
// caller puts the result into the client's leaves with Attach.
//
// Issue refuses a clientURI that is not a client URI (wrapping
// moh.ErrBadClientURI) or names another provider (ErrNotOwnProvider), an
// empty signatureKey, and a notAfter before now.
func (i *Issuer) Issue(clientURI, signatureKey []byte, notAfter time.Time) (*ClientBinding, error) {
	prov, err := providerOf(clientURI)
	if err != nil {
		return nil, fmt.Errorf("issuing client binding: %w", err)
	}
	if !slices.Contains(i.Domains, prov) {
		return nil, fmt.Errorf("issuing client binding for provider %q: %w", prov, ErrNotOwnProvider)
	}
	if len(signatureKey) == 0 {
		return nil, errors.New("issuing client binding: empty signature key")
	}
	now := time.Now()
	if i.Now != nil {
		now = i.Now()
	}
	// not_after is a whole second and inclusive (a binding verifies
	// through that second): one of the current second is still valid,
	// however far into the second now is.
	if notAfter.Unix() < now.Unix() {
		return nil, fmt.Errorf("issuing client binding: not_after %s is before now", notAfter.UTC().Format(time.RFC3339))
	}
	key, err := i.Keys.Current(now)
	if err != nil {
		return nil, fmt.Errorf("issuing client binding: %w", err)
	}
	if key.NotAfter.Before(notAfter) {
		notAfter = key.NotAfter
	}
	na := uint64(notAfter.Unix())
	tbs, err := SignedContent(clientURI, signatureKey, na)
	if err != nil {
		return nil, fmt.Errorf("issuing client binding: %w", err)
	}
	sig, err := key.SignWithLabel(Label, tbs)
	if err != nil {
		return nil, fmt.Errorf("issuing client binding: %w", err)
	}
	return &ClientBinding{NotAfter: na, KeyID: append([]byte(nil), key.ID...), Signature: sig}, nil
}
