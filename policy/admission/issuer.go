package admission

import (
	"errors"
	"fmt"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// Defaults and limits of the issuer role.
const (
	// DefaultRequestPath is the path TokenRequests are POSTed to by
	// default.
	DefaultRequestPath = "/token-request"
	// MaxTokenRequest bounds a TokenRequest body: 3 bytes of header and a
	// blinded message of at most 256 bytes, with room to spare.
	MaxTokenRequest = 1 << 10
)

// Issuer is the token issuer role (RFC 9578): it answers TokenRequests and
// publishes its directory. It does not attest clients: cover token_request
// with a rate-limit zone. It is immutable and safe for concurrent use.
type Issuer struct {
	issuer          *privacypass.Issuer
	keys            []*privacypass.Key
	requestPath     string
	directory       []byte
	issued, refused prometheus.Counter
}

// NewIssuer reads the issuer's key files (the pp-peer format, each with its
// private key; most preferred first, at most one key per token type and
// truncated key id) and prepares the directory, which publishes
// requestPath ("" for DefaultRequestPath) as issuer-request-uri.
func NewIssuer(keyFiles []string, requestPath string) (*Issuer, error) {
	if len(keyFiles) == 0 {
		return nil, errors.New("at least one key file is required")
	}
	if requestPath == "" {
		requestPath = DefaultRequestPath
	}
	if err := ValidRequestPath(requestPath); err != nil {
		return nil, err
	}
	keys := make([]privacypass.IssuerKey, 0, len(keyFiles))
	pub := make([]*privacypass.Key, 0, len(keyFiles))
	for _, f := range keyFiles {
		k, err := privacypass.ReadKeyFile(f)
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", f, err)
		}
		if !k.HasPrivate() {
			return nil, fmt.Errorf("key %s holds no private key", f)
		}
		keys = append(keys, privacypass.IssuerKey{Key: k})
		pub = append(pub, k)
	}
	iss, err := privacypass.NewIssuer(keys...)
	if err != nil {
		return nil, err
	}
	dir, err := iss.Directory(requestPath).Marshal()
	if err != nil {
		return nil, fmt.Errorf("encoding the directory: %w", err)
	}
	return &Issuer{
		issuer: iss, keys: pub, requestPath: requestPath, directory: dir,
		issued: issuerCounter("issued"), refused: issuerCounter("issue_refused"),
	}, nil
}

// RequestPath returns the path TokenRequests are POSTed to.
func (is *Issuer) RequestPath() string { return is.requestPath }

// Directory returns the encoded issuer directory (RFC 9578 §4). The slice
// is shared: callers must not modify it.
func (is *Issuer) Directory() []byte { return is.directory }

// Keys returns the issuer's keys, most preferred first: the keys an origin
// of the same gateway accepts when it has no other. The slice is a copy;
// the keys are immutable.
func (is *Issuer) Keys() []*privacypass.Key { return slices.Clone(is.keys) }

// Issue answers one TokenRequest with a TokenResponse, counting issued or
// issue_refused. The error is a *privacypass.Error whose Reason says why
// (privacypass.ReasonOf).
func (is *Issuer) Issue(tokenRequest []byte) ([]byte, error) {
	resp, err := is.issuer.Issue(tokenRequest)
	if err != nil {
		is.refused.Inc()
		return nil, err
	}
	is.issued.Inc()
	return resp, nil
}

// CountRefusal counts an issue_refused decision for a TokenRequest the
// caller refused before Issue (wrong content type, body above
// MaxTokenRequest).
func (is *Issuer) CountRefusal() { is.refused.Inc() }
