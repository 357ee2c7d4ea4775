package caddymodule

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// tokenIssuer is the provisioned issuer role.
type tokenIssuer struct {
	issuer      *privacypass.Issuer
	keys        []*privacypass.Key
	requestPath string
	directory   []byte
	issued      prometheus.Counter
	refused     prometheus.Counter
}

// requestPath returns the configured request path or its default.
func (is *TokenIssuer) requestPath() string {
	if is.RequestPath == "" {
		return defaultRequestPath
	}
	return is.RequestPath
}

// validate checks the issuer options that need no file.
func (is *TokenIssuer) validate() error {
	if len(is.KeyFiles) == 0 {
		return errors.New("at least one key file is required")
	}
	p := is.requestPath()
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?#% \t") || p == privacypass.DirectoryPath {
		return fmt.Errorf("request_path %q is not an absolute path without query", p)
	}
	return nil
}

// provision reads the issuer keys and prepares the directory.
func (is *TokenIssuer) provision() (*tokenIssuer, error) {
	keys := make([]privacypass.IssuerKey, 0, len(is.KeyFiles))
	pub := make([]*privacypass.Key, 0, len(is.KeyFiles))
	for _, f := range is.KeyFiles {
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
	dir, err := iss.Directory(is.requestPath()).Marshal()
	if err != nil {
		return nil, fmt.Errorf("encoding the directory: %w", err)
	}
	return &tokenIssuer{
		issuer: iss, keys: pub, requestPath: is.requestPath(), directory: dir,
		issued: issuerCounter("issued"), refused: issuerCounter("issue_refused"),
	}, nil
}

// lookupEndpoint returns the endpoint serving path: a MoH endpoint or, when
// the issuer role is configured, the issuer directory or request path.
func (g *Gateway) lookupEndpoint(path string) (endpoint, bool) {
	if ep, ok := endpoints[path]; ok {
		return ep, true
	}
	if g.policy == nil || g.policy.issuer == nil {
		return endpoint{}, false
	}
	switch path {
	case privacypass.DirectoryPath:
		return endpoint{getOnly, (*Gateway).serveIssuerDirectory}, true
	case g.policy.issuer.requestPath:
		return endpoint{postOnly, (*Gateway).serveTokenRequest}, true
	}
	return endpoint{}, false
}

// serveIssuerDirectory answers the issuer directory (RFC 9578 §4).
func (g *Gateway) serveIssuerDirectory(w http.ResponseWriter, r *http.Request) {
	dir := g.policy.issuer.directory
	h := w.Header()
	h.Set("Content-Type", privacypass.MediaTypeIssuerDirectory)
	h.Set("Cache-Control", "public, max-age=3600")
	h.Set("Content-Length", strconv.Itoa(len(dir)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(dir) //nolint:errcheck // the client went away
	}
}

// serveTokenRequest answers one TokenRequest with a TokenResponse (RFC 9578
// §5.2, §6.2). Errors are plain-text issuance errors, not DSErrors: the
// client is a Privacy Pass client, not a MoH peer.
func (g *Gateway) serveTokenRequest(w http.ResponseWriter, r *http.Request) {
	is := g.policy.issuer
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != privacypass.MediaTypeTokenRequest {
		is.refuse(g, w, r, http.StatusUnsupportedMediaType, "content type must be "+privacypass.MediaTypeTokenRequest)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxTokenRequest+1))
	if err != nil {
		is.refuse(g, w, r, http.StatusBadRequest, "reading the token request failed")
		return
	}
	if len(body) > maxTokenRequest {
		is.refuse(g, w, r, http.StatusRequestEntityTooLarge, "token request too large")
		return
	}
	resp, err := is.issuer.Issue(body)
	if err != nil {
		is.refuse(g, w, r, http.StatusUnprocessableEntity, "token request refused: "+string(privacypass.ReasonOf(err)))
		return
	}
	is.issued.Inc()
	h := w.Header()
	h.Set("Content-Type", privacypass.MediaTypeTokenResponse)
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(resp)))
	w.WriteHeader(http.StatusOK)
	w.Write(resp) //nolint:errcheck // the client went away
}

// refuse answers an issuance error and logs it at debug level.
func (is *tokenIssuer) refuse(g *Gateway, w http.ResponseWriter, r *http.Request, status int, msg string) {
	is.refused.Inc()
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n") //nolint:errcheck // the client went away
	if c := g.logger.Check(zapcore.DebugLevel, "refused token request"); c != nil {
		c.Write(zap.Int("status", status), zap.String("reason", msg), zap.String("remote_ip", remoteIP(r)))
	}
}
