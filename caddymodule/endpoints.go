package caddymodule

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// endpoint is one path the gateway owns.
type endpoint struct {
	methods []string
	serve   func(g *Gateway, w http.ResponseWriter, r *http.Request)
}

func (e endpoint) allows(method string) bool {
	for _, m := range e.methods {
		if m == method {
			return true
		}
	}
	return false
}

func (e endpoint) allow() string { return strings.Join(e.methods, ", ") }

var (
	getOnly  = []string{http.MethodGet, http.MethodHead}
	postOnly = []string{http.MethodPost}
	getPost  = []string{http.MethodGet, http.MethodPost}
)

// endpoints is the routing table (docs/protocol.md §2).
var endpoints = map[string]endpoint{
	"/.well-known/mimi/ds-domain":  {getOnly, (*Gateway).serveDiscovery},
	"/healthz":                     {getOnly, (*Gateway).serveHealth},
	"/verification_key":            {getPost, (*Gateway).serveVerificationKey},
	"/group_operation":             {postOnly, dsEndpoint(groupOperationTypes)},
	"/welcome_information":         {getPost, dsEndpoint(typeSet(moh.WelcomeInfo))},
	"/external_commit_information": {getPost, dsEndpoint(typeSet(moh.ExternalCommitInfo))},
	"/attachment_upload":           {postOnly, dsEndpoint(typeSet(moh.AttachmentUpload))},
	"/attachment_download":         {postOnly, dsEndpoint(typeSet(moh.AttachmentDownload))},
	"/attachment_delete":           {postOnly, dsEndpoint(typeSet(moh.AttachmentDelete))},
	"/attachment_copy":             {postOnly, dsEndpoint(typeSet(moh.AttachmentCopy))},
	"/deliver_message":             {postOnly, providerEndpoint(moh.DeliverMessage)},
	"/connection_request":          {postOnly, providerEndpoint(moh.ConnectionRequest)},
	"/connection_key_packages":     {postOnly, providerEndpoint(moh.ConnectionKeyPackages)},
	"/group_key_packages":          {postOnly, providerEndpoint(moh.GroupKeyPackages)},
}

// groupOperationTypes are the DS request types /group_operation accepts.
var groupOperationTypes = typeSet(moh.RequestGroupID, moh.CreateGroup, moh.DeleteGroup, moh.AddUsers,
	moh.RemoveUsers, moh.AddClients, moh.RemoveClients, moh.SelfRemoveClient, moh.UpdateClient,
	moh.ExternalJoin, moh.SendMessage, moh.ReInitializeGroup)

func typeSet(types ...moh.RequestType) map[moh.RequestType]bool {
	m := make(map[moh.RequestType]bool, len(types))
	for _, t := range types {
		m[t] = true
	}
	return m
}

// serveDiscovery answers /.well-known/mimi/ds-domain with the DS authority.
func (g *Gateway) serveDiscovery(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "max-age=3600")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write([]byte(g.DSDomain)) //nolint:errcheck
	}
}

// serveHealth answers liveness probes.
func (g *Gateway) serveHealth(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write([]byte("ok\n")) //nolint:errcheck
	}
}

// serveVerificationKey answers with the current and recently retired keys.
// The body is empty or a VerificationKeyRequest.
func (g *Gateway) serveVerificationKey(w http.ResponseWriter, r *http.Request) {
	body, err := g.readBody(r, true)
	if err != nil {
		g.refuse(w, r, err)
		return
	}
	if len(body) > 0 {
		var req moh.VerificationKeyRequest
		if err := wire.Unmarshal(body, &req, "VerificationKeyRequest"); err != nil {
			g.refuse(w, r, err)
			return
		}
		if req.ProtocolVersion != moh.ProtocolVersion {
			g.refuse(w, r, moh.Errorf(moh.CodeUnsupportedVersion, "protocol version %d is not supported", req.ProtocolVersion))
			return
		}
	}
	keys := g.state.keys.Published(time.Now())
	if err := writeResponse(w, http.StatusOK, &moh.DSResponse{Type: moh.ResponseVerificationKeys, VerificationKeys: keys}); err != nil {
		g.refuse(w, r, err)
	}
}

// dsEndpoint returns the handler of a client-signed DS endpoint accepting
// the given request types.
func dsEndpoint(accepted map[moh.RequestType]bool) func(*Gateway, http.ResponseWriter, *http.Request) {
	return func(g *Gateway, w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/attachment_upload" {
			g.serveUpload(w, r)
			return
		}
		body, err := g.readBody(r, false)
		if err != nil {
			g.refuse(w, r, err)
			return
		}
		typ, ok := moh.PeekRequestType(body)
		switch {
		case !ok:
			g.refuse(w, r, moh.Errorf(moh.CodeMalformed, "decoding DSRequest: no protocol version and request type"))
			return
		case !typ.Known():
			g.refuse(w, r, moh.Errorf(moh.CodeMalformed, "unknown request type %d", typ))
			return
		case !accepted[typ]:
			g.refuse(w, r, moh.Errorf(moh.CodeWrongRequestType, "request type %s is not accepted on %s", typ, r.URL.Path))
			return
		case typ.CarriesMLS():
			g.refuse(w, r, moh.Errorf(moh.CodeNotImplemented, "request type %s is not implemented yet", typ))
			return
		}
		var req moh.DSRequest
		if err := wire.Unmarshal(body, &req, "DSRequest"); err != nil {
			g.refuse(w, r, err)
			return
		}
		switch req.Body.Type {
		case moh.RequestGroupID:
			g.serveRequestGroupID(w, r, &req)
		default:
			g.refuse(w, r, moh.Errorf(moh.CodeNotImplemented, "request type %s is not implemented yet", req.Body.Type))
		}
	}
}

// maxUploadHeader bounds the DSRequest that precedes an upload's content.
const maxUploadHeader = 4 << 10

// serveUpload reads and checks the DSRequest header of an upload. Uploads
// are streamed (header, then content) and are not held to max_body; storing
// the content lands with the attachments issue, so a well-formed header is
// answered not_implemented.
func (g *Gateway) serveUpload(w http.ResponseWriter, r *http.Request) {
	if err := checkContentType(r); err != nil {
		g.refuse(w, r, err)
		return
	}
	head := make([]byte, maxUploadHeader)
	n, err := io.ReadFull(r.Body, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		g.refuse(w, r, moh.Errorf(moh.CodeMalformed, "reading upload header: %w", err))
		return
	}
	s := cryptobyte.String(head[:n])
	var req moh.DSRequest
	if !req.UnmarshalWire(&s) {
		g.refuse(w, r, moh.Errorf(moh.CodeMalformed, "decoding upload DSRequest: truncated or invalid field"))
		return
	}
	if req.Body.Type != moh.AttachmentUpload {
		g.refuse(w, r, moh.Errorf(moh.CodeWrongRequestType, "request type %s is not accepted on %s", req.Body.Type, r.URL.Path))
		return
	}
	g.refuse(w, r, moh.Errorf(moh.CodeNotImplemented, "attachment upload is not implemented yet"))
}

// serveRequestGroupID answers request type 0 with 16 random bytes.
func (g *Gateway) serveRequestGroupID(w http.ResponseWriter, r *http.Request, req *moh.DSRequest) {
	if req.Auth.Type != moh.AuthAnonymous {
		g.refuse(w, r, moh.Errorf(moh.CodeMalformed, "request_group_id must be anonymous"))
		return
	}
	id := make([]byte, 16)
	rand.Read(id)
	if err := writeResponse(w, http.StatusOK, &moh.DSResponse{Type: moh.ResponseGroupID, GroupID: id}); err != nil {
		g.refuse(w, r, err)
	}
}

// providerEndpoint returns the handler of a provider-signed endpoint: the
// request is verified (replay included) by mimicore, then processed.
func providerEndpoint(typ moh.ProviderRequestType) func(*Gateway, http.ResponseWriter, *http.Request) {
	return func(g *Gateway, w http.ResponseWriter, r *http.Request) {
		body, err := g.readBody(r, false)
		if err != nil {
			g.refuse(w, r, err)
			return
		}
		answer, err := g.inbound.Handle(g.admitContext(r), body, typ, g.processors[typ])
		if answer.Status == 0 {
			g.refuse(w, r, err)
			return
		}
		if err != nil {
			g.logger.Error("provider request answered but not recorded", zap.String("path", r.URL.Path), zap.Error(err))
		}
		writeRaw(w, answer.Status, answer.Body)
	}
}

// notImplemented is the processor of provider endpoints whose payload
// handling lands in a later issue. The request was authenticated; the
// answer is recorded like any other, so a retry gets the same one.
func notImplemented(typ moh.ProviderRequestType) provider.Processor {
	return func(context.Context, *provider.Verified) store.Answer {
		status, body := errorAnswer(moh.Errorf(moh.CodeNotImplemented, "%s is not implemented yet", typ))
		return store.Answer{Status: status, Body: body}
	}
}
