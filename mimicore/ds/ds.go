// Package ds is the Delivery Service of docs/protocol.md §5: it answers the
// client requests of /group_operation, /welcome_information,
// /external_commit_information and the attachment endpoints, each arriving
// as an encoded DSRequest, with a DSResponse.
//
// It knows nothing of HTTP, and calls nothing above it. The HTTP layer
// routes a body here after its endpoint, method, size, content type and
// request type checks, in two steps with its admission policy between them:
//
//	req, err := s.Authenticate(ctx, body) // decode, check the client signature
//	// admit req.GroupID and req.Member (group and member rate limits)
//	resp, err := s.Handle(ctx, req)        // process: a DSResponse or a DSError
//
// Errors carry the DSError to answer with (a *moh.Error).
//
// Today it serves request_group_id; the group operations, their durable
// state and the client signature checks land with the Delivery Service
// work, behind the same Handle.
package ds

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
)

// GroupIDSize is the length of the group ids request_group_id hands out:
// 128 random bits.
const GroupIDSize = 16

// Service is the Delivery Service of one provider. It is safe for
// concurrent use.
type Service struct{}

// Request is an authenticated client request.
type Request struct {
	// Body is the decoded DSRequest.
	Body *moh.DSRequest
	// GroupID and Member name the group and the member (its leaf) that
	// the client signature was verified for: the keys of the admission
	// policy's group and member zones. Both are empty for an anonymous
	// request, which no such zone can key.
	GroupID, Member []byte
}

// Authenticate decodes an encoded DSRequest and checks its authentication.
// The caller has checked that its request type is one the endpoint accepts
// (moh.PeekHeader).
func (s *Service) Authenticate(ctx context.Context, body []byte) (*Request, error) {
	h, err := moh.PeekHeader(body) // malformed, or unsupported_version
	if err != nil {
		return nil, err
	}
	if typ := moh.RequestType(h.Type); typ.CarriesMLS() {
		// The MLS-carrying operations are not served yet; say so before
		// spending anything on decoding them.
		return nil, moh.Errorf(moh.CodeNotImplemented, "request type %s is not implemented yet", typ)
	}
	req, err := moh.DecodeDSRequest(body)
	if err != nil {
		return nil, err
	}
	switch req.Body.Type {
	case moh.RequestGroupID:
		// A group id is not yet bound to anyone: the request must be
		// anonymous.
		if req.Auth.Type != moh.AuthAnonymous {
			return nil, moh.Errorf(moh.CodeMalformed, "request_group_id must be anonymous, not %s", authName(req.Auth.Type))
		}
		return &Request{Body: req}, nil
	}
	return nil, moh.Errorf(moh.CodeNotImplemented, "request type %s is not implemented yet", req.Body.Type)
}

// Handle processes an authenticated request.
func (s *Service) Handle(ctx context.Context, r *Request) (*moh.DSResponse, error) {
	switch r.Body.Body.Type {
	case moh.RequestGroupID:
		return s.requestGroupID()
	}
	return nil, moh.Errorf(moh.CodeNotImplemented, "request type %s is not implemented yet", r.Body.Body.Type)
}

// requestGroupID answers request type 0 with GroupIDSize random bytes.
func (s *Service) requestGroupID() (*moh.DSResponse, error) {
	id := make([]byte, GroupIDSize)
	rand.Read(id)
	return &moh.DSResponse{Type: moh.ResponseGroupID, GroupID: id}, nil
}

// authName names a DSAuthType for messages.
func authName(t moh.AuthType) string {
	switch t {
	case moh.AuthAnonymous:
		return "anonymous"
	case moh.AuthClientSignature:
		return "client_signature"
	case moh.AuthKeyPackageSignature:
		return "key_package_signature"
	}
	return fmt.Sprintf("auth type %d", uint8(t))
}

// ProviderProcessor returns the processor of provider requests of typ
// (docs/protocol.md §4): the queueing service and the KeyPackage directory
// for peers, which land with the federation work. Until then each request
// is authenticated, replay-checked and answered not_implemented, and the
// answer is recorded like any other.
func (s *Service) ProviderProcessor(typ moh.ProviderRequestType) provider.Processor {
	return func(context.Context, *provider.Verified) (*moh.DSResponse, error) {
		return nil, moh.Errorf(moh.CodeNotImplemented, "%s is not implemented yet", typ)
	}
}
