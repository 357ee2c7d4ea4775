package caddymodule

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
	"github.com/caddy-mimi/caddy-mimi/policy/admission"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// exchange is one request on its way through the pipeline.
type exchange struct {
	w   http.ResponseWriter
	r   *http.Request
	rt  *route
	adm admission.Request
	// held is the body memory taken from the in-flight budget, returned
	// when the request ends.
	held int64

	// g and done carry the exchange to a worker and its outcome back
	// (see workerPool); done is kept when the exchange is recycled.
	g    *Gateway
	done chan any
}

// exchanges recycles exchange values: one is needed per request.
var exchanges = sync.Pool{New: func() any { return new(exchange) }}

// ServeHTTP answers the paths of the endpoint table and passes every other
// request to next. A request flows down once: route, transport and method
// checks, admission on the request, body, authentication, admission on
// what was authenticated, processing in mimicore, answer.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	rt, ok := g.routes[r.URL.Path]
	if !ok {
		return next.ServeHTTP(w, r)
	}
	x := exchanges.Get().(*exchange)
	*x = exchange{w: w, r: r, rt: rt, done: x.done}
	defer func() {
		x.release()
		*x = exchange{done: x.done} // drop the request's references before reuse
		exchanges.Put(x)
	}()
	if err := g.checkTransport(r); err != nil {
		g.refuse(x, err)
		return nil
	}
	if !rt.allows(r.Method) {
		w.Header().Set("Allow", rt.allow())
		g.refuse(x, moh.Errorf(moh.CodeMethodNotAllowed, "method %s is not allowed here", r.Method))
		return nil
	}
	x.adm = admission.Request{ClientIP: clientAddr(r), Authorization: r.Header.Get("Authorization")}
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		x.adm.Placeholders = repl
	}
	if err := rt.plan.Before(r.Context(), &x.adm); err != nil {
		g.refuse(x, err)
		return nil
	}
	workers.serve(g, x)
	return nil
}

// checkTransport requires a completed TLS 1.3 handshake, or a request from a
// declared TLS-terminating proxy when TLS did not terminate here. Early data
// (0-RTT) is answered too_early, so the client retries after the handshake
// (RFC 8470).
func (g *Gateway) checkTransport(r *http.Request) error {
	if r.TLS != nil {
		switch {
		case r.TLS.Version != tls.VersionTLS13:
			return moh.Errorf(moh.CodeForbidden, "TLS 1.3 is required")
		case !r.TLS.HandshakeComplete:
			return moh.Errorf(moh.CodeTooEarly, "request sent as TLS early data; retry after the handshake")
		}
		return nil
	}
	if a, ok := remoteAddr(r); ok {
		for _, p := range g.proxies {
			if p.Contains(a) {
				return nil
			}
		}
	}
	return moh.Errorf(moh.CodeForbidden, "TLS 1.3 is required")
}

// serveDiscovery answers /.well-known/mimi/ds-domain with the DS authority.
func (g *Gateway) serveDiscovery(x *exchange) {
	writeText(x, "max-age=3600", g.DSDomain)
}

// serveHealth answers liveness probes.
func (g *Gateway) serveHealth(x *exchange) {
	writeText(x, "no-store", "ok\n")
}

// writeText writes a text/plain answer, with no body for HEAD.
func writeText(x *exchange, cacheControl, text string) {
	h := x.w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", cacheControl)
	x.w.WriteHeader(http.StatusOK)
	if x.r.Method != http.MethodHead {
		io.WriteString(x.w, text) //nolint:errcheck // the client went away
	}
}

// serveVerificationKey answers with the current and recently retired keys.
// The body is empty or a VerificationKeyRequest.
func (g *Gateway) serveVerificationKey(x *exchange) {
	body, err := g.readBody(x, g.MaxBody, true)
	if err != nil {
		g.refuse(x, err)
		return
	}
	if len(body) > 0 {
		if err := moh.CheckVersion(body); err != nil {
			g.refuse(x, err)
			return
		}
		var req moh.VerificationKeyRequest
		if err := wire.Unmarshal(body, &req, "VerificationKeyRequest"); err != nil {
			g.refuse(x, err)
			return
		}
		if req.ProtocolVersion != moh.ProtocolVersion {
			g.refuse(x, moh.Errorf(moh.CodeUnsupportedVersion, "protocol version %d is not supported", req.ProtocolVersion))
			return
		}
	}
	keys := g.svc.Keys().Published(time.Now())
	g.respond(x, &moh.DSResponse{Type: moh.ResponseVerificationKeys, VerificationKeys: keys})
}

// serveClient runs a client-signed DS request through the Delivery Service.
func (g *Gateway) serveClient(x *exchange) {
	body, err := g.readBody(x, g.MaxBody, false)
	if err != nil {
		g.refuse(x, err)
		return
	}
	if err := x.rt.checkDSHeader(body); err != nil {
		g.refuse(x, err)
		return
	}
	ctx := x.r.Context()
	req, err := g.ds.Authenticate(ctx, body)
	if err != nil {
		if moh.DSErrorOf(err).Code != moh.CodeNotFound || !g.relayToHub(x, body) {
			g.refuse(x, err)
		}
		return
	}
	if len(req.GroupID) > 0 {
		if err := x.admitMember(ctx, req.GroupID, req.Member); err != nil {
			g.refuse(x, err)
			return
		}
	}
	req.Source = x.adm.ClientIP
	resp, err := g.ds.Handle(ctx, req)
	if err != nil {
		// A group hosted elsewhere: not_found here, relayed to its hub.
		if moh.DSErrorOf(err).Code != moh.CodeNotFound || !g.relayToHub(x, body) {
			g.refuse(x, err)
		}
		return
	}
	g.respond(x, resp)
}

// checkDSHeader checks the protocol version and request type at the start
// of a DSRequest against the endpoint.
func (rt *route) checkDSHeader(body []byte) error {
	h, err := moh.PeekHeader(body)
	if err != nil {
		return err
	}
	switch typ := moh.RequestType(h.Type); {
	case !typ.Known():
		return moh.Errorf(moh.CodeMalformed, "unknown request type %d", typ)
	case !rt.accepts(typ):
		return moh.Errorf(moh.CodeWrongRequestType, "request type %s is not accepted on %s", typ, rt.path)
	}
	return nil
}

// admitMember runs the endpoint's group and member zones on the group and
// member the DS verified.
func (x *exchange) admitMember(ctx context.Context, groupID, member []byte) error {
	x.adm.Group, x.adm.Member = groupID, member
	return x.rt.plan.Member(ctx, &x.adm)
}

// maxUploadHeader bounds the DSRequest that precedes an upload's content.
const maxUploadHeader = 4 << 10

// serveProvider runs a provider-signed request: verification (docs/protocol.md
// §4 checks 1-7), the admission plan on the verified sender, then the
// replay-guarded processing in mimicore.
func (g *Gateway) serveProvider(x *exchange) {
	body, err := g.readBody(x, g.MaxBody, false)
	if err != nil {
		g.refuse(x, err)
		return
	}
	ctx := x.r.Context()
	typ := x.rt.providerType
	v, err := g.inbound.Verify(ctx, body, typ, provider.VerifyOptions{Source: x.adm.ClientIP})
	if err != nil {
		g.refuse(x, err)
		return
	}
	if err := g.checkPeerCertificate(ctx, x, v); err != nil {
		g.refuse(x, err)
		return
	}
	x.adm.Sender = v.Request.Sender
	if err := x.rt.plan.Sender(ctx, &x.adm); err != nil {
		g.refuse(x, err)
		return
	}
	answer, err := g.inbound.Handle(ctx, v, g.processProvider)
	if answer == nil {
		g.refuse(x, err)
		return
	}
	code := moh.AnswerCode(answer)
	if err != nil {
		g.logRefusal(x, code, err) // a recorded refusal of the request
	}
	if code == moh.CodeRateLimited {
		// The KeyPackage claim limit, the only limit applied in
		// processing; set for a replayed answer too.
		x.w.Header().Set("Retry-After", g.claimRetryAfter)
	}
	writeAnswer(x.w, statusOf(code), answer)
}

// serveIssuerDirectory answers the issuer directory (RFC 9578 §4).
func (g *Gateway) serveIssuerDirectory(x *exchange) {
	dir := g.issuer.Directory()
	h := x.w.Header()
	h.Set("Content-Type", privacypass.MediaTypeIssuerDirectory)
	h.Set("Cache-Control", "public, max-age=3600")
	h.Set("Content-Length", strconv.Itoa(len(dir)))
	x.w.WriteHeader(http.StatusOK)
	if x.r.Method != http.MethodHead {
		x.w.Write(dir) //nolint:errcheck // the client went away
	}
}

// serveTokenRequest answers one TokenRequest with a TokenResponse (RFC 9578
// §5.2, §6.2). Errors are plain-text issuance errors, not DSErrors: the
// client is a Privacy Pass client, not a MoH peer.
func (g *Gateway) serveTokenRequest(x *exchange) {
	if err := checkContentType(x.r, privacypass.MediaTypeTokenRequest); err != nil {
		g.refuseIssuance(x, http.StatusUnsupportedMediaType, "content type must be "+privacypass.MediaTypeTokenRequest)
		return
	}
	body, err := g.readBody(x, admission.MaxTokenRequest, false)
	if err != nil {
		if moh.DSErrorOf(err).Code == moh.CodeTooLarge {
			g.refuseIssuance(x, http.StatusRequestEntityTooLarge, "token request too large")
		} else {
			g.refuseIssuance(x, http.StatusBadRequest, "reading the token request failed")
		}
		return
	}
	resp, err := g.issuer.Issue(body)
	if err != nil {
		g.refuseIssuance(x, http.StatusUnprocessableEntity, "token request refused: "+string(privacypass.ReasonOf(err)))
		return
	}
	h := x.w.Header()
	h.Set("Content-Type", privacypass.MediaTypeTokenResponse)
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(resp)))
	x.w.WriteHeader(http.StatusOK)
	x.w.Write(resp) //nolint:errcheck // the client went away
}

// refuseIssuance answers an issuance error and logs it at debug level.
func (g *Gateway) refuseIssuance(x *exchange, status int, msg string) {
	if status != http.StatusUnprocessableEntity { // Issue counted its own refusals
		g.issuer.CountRefusal()
	}
	h := x.w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	x.w.WriteHeader(status)
	io.WriteString(x.w, msg+"\n") //nolint:errcheck // the client went away
	if c := g.logger.Check(zapcore.DebugLevel, "refused token request"); c != nil {
		c.Write(zap.Int("status", status), zap.String("reason", msg), zap.String("remote_ip", remoteIP(x.r)))
	}
}

// checkContentType requires media type want (in lower case) on r; the
// comparison is case-insensitive and ignores parameters. A header of
// exactly want, as peers send it, is accepted without parsing it
// (mime.ParseMediaType allocates a map of parameters each time).
func checkContentType(r *http.Request, want string) error {
	got := r.Header.Get("Content-Type")
	if got == want {
		return nil
	}
	if mt, _, err := mime.ParseMediaType(got); err != nil || mt != want {
		return moh.Errorf(moh.CodeUnsupportedMedia, "content type must be %s", want)
	}
	return nil
}

// respond encodes resp and writes it with the status of its type.
func (g *Gateway) respond(x *exchange, resp *moh.DSResponse) {
	body, err := wire.Marshal(resp)
	if err != nil {
		g.refuse(x, err)
		return
	}
	writeAnswer(x.w, http.StatusOK, body)
}

// refuse writes the error answer for err and logs it. A refusal of the
// admission policy carries its header (Retry-After or WWW-Authenticate)
// and was logged by the policy with its zone and endpoint.
func (g *Gateway) refuse(x *exchange, err error) {
	dsErr := moh.DSErrorOf(err)
	code := dsErr.Code
	if !setRefusalHeaders(x.w.Header(), err) {
		g.logRefusal(x, code, err)
	}
	writeAnswer(x.w, statusOf(code), moh.EncodeError(dsErr))
}

// setRefusalHeaders sets the headers of the admission.Refusal in err, if
// it holds one (Retry-After, WWW-Authenticate), and reports whether it
// does.
func setRefusalHeaders(h http.Header, err error) bool {
	var refusal *admission.Refusal
	if !errors.As(err, &refusal) {
		return false
	}
	if refusal.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(refusal.RetryAfterSeconds()))
	}
	if refusal.Challenge != "" {
		h.Set("WWW-Authenticate", refusal.Challenge)
	}
	return true
}

// logRefusal logs a refused request; code is the code err is answered
// with (moh.DSErrorOf(err).Code). Refusals of bad or unwelcome requests are
// routine (debug); a failure of the gateway itself (backend_unavailable,
// or an error without a code) is an error an operator must see, logged
// through a sampler so that a flood of requests cannot flood the log.
func (g *Gateway) logRefusal(x *exchange, code moh.Code, err error) {
	if code != moh.CodeBackendUnavailable && !g.logger.Core().Enabled(zapcore.DebugLevel) {
		// A routine refusal with debug off: nothing to log. (An error
		// without a code is answered backend_unavailable.) Checked first,
		// since finding the coded error costs an allocation per request.
		return
	}
	logger, level := g.logger, zapcore.DebugLevel
	var coded *moh.Error
	isCoded := errors.As(err, &coded) || errors.Is(err, wire.ErrMalformed)
	if !isCoded || code == moh.CodeBackendUnavailable {
		logger, level = g.sampled, zapcore.ErrorLevel
	}
	if c := logger.Check(level, "refused mimi request"); c != nil {
		fields := []zap.Field{zap.String("endpoint", x.rt.name), zap.String("code", code.String()),
			zap.String("remote_ip", remoteIP(x.r)), zap.Error(err)}
		if coded != nil && coded.Err != nil {
			// A coded error's text is what the peer reads; its cause is
			// for the operator only.
			fields = append(fields, zap.NamedError("cause", coded.Err))
		}
		c.Write(fields...)
	}
}

// remoteAddr is the socket peer of r.
func remoteAddr(r *http.Request) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

// remoteIP is the socket peer of r for logs.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// clientAddr returns the client IP Caddy determined for r: the client_ip
// variable, which honours the server's trusted_proxies, or the socket peer
// when the variable is absent (outside a Caddy server). The zero Addr
// means the client has no IP address (a unix socket).
func clientAddr(r *http.Request) netip.Addr {
	if s, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && s != "" {
		if a, err := netip.ParseAddr(s); err == nil {
			return a
		}
	}
	a, _ := remoteAddr(r)
	return a
}
