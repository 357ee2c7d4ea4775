package caddymodule

import (
	"net/http"
	"strings"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/policy/admission"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// bodyKind is what an endpoint's request body holds.
type bodyKind uint8

const (
	bodyNone            bodyKind = iota // no body is read
	bodyVerificationKey                 // empty, or a VerificationKeyRequest
	bodyDSRequest                       // a DSRequest, at most max_body bytes
	bodyUpload                          // a DSRequest header, then streamed content
	bodyProviderRequest                 // a ProviderRequest, at most max_body bytes
	bodyTokenRequest                    // a Privacy Pass TokenRequest (issuer role)
)

// String returns the body kind as docs/protocol.md's endpoint table names it.
func (b bodyKind) String() string {
	return [...]string{"none", "VerificationKeyRequest or empty", "DSRequest",
		"DSRequest then content (streamed)", "ProviderRequest", "TokenRequest"}[b]
}

// isMoH reports whether the body is a MoH request, the only kind a Privacy
// Pass token can be required for.
func (b bodyKind) isMoH() bool {
	return b == bodyVerificationKey || b == bodyDSRequest || b == bodyUpload || b == bodyProviderRequest
}

// authKind is how a request to an endpoint is authenticated.
type authKind uint8

const (
	authNone     authKind = iota // nothing to authenticate
	authClient                   // a client signature in the DSRequest, checked by the DS
	authProvider                 // the provider signature of the envelope, docs/protocol.md §4
)

// String returns the authentication as docs/protocol.md's endpoint table
// names it.
func (a authKind) String() string {
	return [...]string{"none", "client signature", "provider signature"}[a]
}

// Methods lists.
var (
	getOnly  = []string{http.MethodGet, http.MethodHead}
	postOnly = []string{http.MethodPost}
	getPost  = []string{http.MethodGet, http.MethodPost}
)

// endpoint is one path the gateway owns. Everything about an endpoint is
// derived from its entry: routing, 405 with Allow, the body limit and
// content type checks, the accepted request types, the authentication, the
// admission policy's plan and the metric and log label (name).
type endpoint struct {
	path    string
	name    string // the policy, metric and log name
	methods []string
	body    bodyKind
	// dsTypes are the DS request types a client endpoint accepts.
	dsTypes []moh.RequestType
	// providerType is the request type a provider endpoint accepts.
	providerType moh.ProviderRequestType
	auth         authKind
	// notDefault: a rate-limit zone that lists no endpoints does not
	// cover it (probes and directories that clients and balancers poll).
	notDefault bool
	serve      func(g *Gateway, x *exchange)
}

// endpointTable is every MoH endpoint (docs/protocol.md §2). The issuer
// role adds issuerEndpoints when configured.
var endpointTable = []endpoint{
	{path: "/.well-known/mimi/ds-domain", name: "ds_domain", methods: getOnly, serve: (*Gateway).serveDiscovery},
	{path: "/healthz", name: "healthz", methods: getOnly, notDefault: true, serve: (*Gateway).serveHealth},
	{path: "/verification_key", name: "verification_key", methods: getPost, body: bodyVerificationKey,
		serve: (*Gateway).serveVerificationKey},
	{path: "/group_operation", name: "group_operation", methods: postOnly, body: bodyDSRequest, auth: authClient,
		dsTypes: []moh.RequestType{moh.RequestGroupID, moh.CreateGroup, moh.DeleteGroup, moh.AddUsers,
			moh.RemoveUsers, moh.AddClients, moh.RemoveClients, moh.SelfRemoveClient, moh.UpdateClient,
			moh.ExternalJoin, moh.SendMessage, moh.ReInitializeGroup},
		serve: (*Gateway).serveClient},
	clientEndpoint("/welcome_information", getPost, moh.WelcomeInfo),
	clientEndpoint("/external_commit_information", getPost, moh.ExternalCommitInfo),
	{path: "/attachment_upload", name: "attachment_upload", methods: postOnly, body: bodyUpload, auth: authClient,
		dsTypes: []moh.RequestType{moh.AttachmentUpload}, serve: (*Gateway).serveUpload},
	{path: "/attachment_download", name: "attachment_download", methods: postOnly, body: bodyDSRequest, auth: authClient,
		dsTypes: []moh.RequestType{moh.AttachmentDownload}, serve: (*Gateway).serveDownload},
	clientEndpoint("/attachment_delete", postOnly, moh.AttachmentDelete),
	clientEndpoint("/attachment_copy", postOnly, moh.AttachmentCopy),
	providerEndpoint(moh.DeliverMessage),
	providerEndpoint(moh.ConnectionRequest),
	providerEndpoint(moh.ConnectionKeyPackages),
	providerEndpoint(moh.GroupKeyPackages),
}

// clientEndpoint is the entry of a client-signed DS endpoint accepting one
// request type.
func clientEndpoint(path string, methods []string, typ moh.RequestType) endpoint {
	return endpoint{path: path, name: strings.TrimPrefix(path, "/"), methods: methods, body: bodyDSRequest,
		auth: authClient, dsTypes: []moh.RequestType{typ}, serve: (*Gateway).serveClient}
}

// providerEndpoint is the entry of the provider-signed endpoint of typ.
func providerEndpoint(typ moh.ProviderRequestType) endpoint {
	return endpoint{path: "/" + typ.String(), name: typ.String(), methods: postOnly, body: bodyProviderRequest,
		auth: authProvider, providerType: typ, serve: (*Gateway).serveProvider}
}

// issuerEndpoints are the entries of the Privacy Pass issuer role, whose
// token request path is configurable.
func issuerEndpoints(requestPath string) []endpoint {
	return []endpoint{
		{path: privacypass.DirectoryPath, name: "issuer_directory", methods: getOnly, notDefault: true,
			serve: (*Gateway).serveIssuerDirectory},
		{path: requestPath, name: "token_request", methods: postOnly, body: bodyTokenRequest,
			serve: (*Gateway).serveTokenRequest},
	}
}

// allows reports whether the endpoint accepts method.
func (e *endpoint) allows(method string) bool {
	for _, m := range e.methods {
		if m == method {
			return true
		}
	}
	return false
}

// allow is the endpoint's Allow header value.
func (e *endpoint) allow() string { return strings.Join(e.methods, ", ") }

// accepts reports whether a client endpoint accepts DS request type t.
func (e *endpoint) accepts(t moh.RequestType) bool {
	for _, a := range e.dsTypes {
		if a == t {
			return true
		}
	}
	return false
}

// admissionKind is how the admission policy sees the endpoint: which zone
// keys can apply to it.
func (e *endpoint) admissionKind() admission.Kind {
	switch {
	case e.auth == authProvider:
		return admission.KindProvider
	case e.auth == authClient:
		return admission.KindClient
	case e.body == bodyTokenRequest || e.path == privacypass.DirectoryPath:
		return admission.KindIssuer
	}
	return admission.KindOther
}

// route is a provisioned endpoint: its entry and its admission plan.
type route struct {
	*endpoint
	plan *admission.Plan
}

// routeTable returns the endpoints of a gateway: the table, plus the
// issuer's when requestPath is not empty.
func routeTable(requestPath string) []endpoint {
	eps := endpointTable
	if requestPath != "" {
		eps = append(append([]endpoint(nil), endpointTable...), issuerEndpoints(requestPath)...)
	}
	return eps
}

// admissionEndpoints describes eps to the admission policy.
func admissionEndpoints(eps []endpoint) []admission.Endpoint {
	out := make([]admission.Endpoint, len(eps))
	for i := range eps {
		ep := &eps[i]
		out[i] = admission.Endpoint{Name: ep.name, Path: ep.path, Kind: ep.admissionKind(),
			NotDefault: ep.notDefault, NoToken: !ep.body.isMoH()}
	}
	return out
}
