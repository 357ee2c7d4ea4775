// Package ds is the Delivery Service of docs/protocol.md §5: it answers the
// client requests of /group_operation, /welcome_information,
// /external_commit_information and the attachment endpoints, each arriving
// as an encoded DSRequest, with a DSResponse.
//
// It knows nothing of HTTP. The HTTP layer routes a body here after its
// endpoint, method, size, content type and request type checks; Handle
// decodes it, authenticates it, asks the admission policy (through
// Admitter, once the group and member are known and verified) and answers
// with a *moh.DSResponse, or an error carrying the DSError to answer with.
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

// Admitter applies the admission policy to a client request whose
// signature verified, keyed on its group and member. It returns nil to
// admit, or the refusal to answer with. The DS calls it only with verified
// values, never with fields of an unverified body, so that a forger cannot
// spend another group's or member's budget.
type Admitter interface {
	AdmitMember(ctx context.Context, groupID, member []byte) error
}

// Service is the Delivery Service of one provider. It is safe for
// concurrent use.
type Service struct{}

// Request is one client request to the DS.
type Request struct {
	// Body is the encoded DSRequest. The caller has checked that its
	// request type is one the endpoint accepts (moh.PeekRequestType).
	Body []byte
	// Admit applies the group and member rate limits; nil admits all.
	Admit Admitter
}

// Handle answers one client request.
func (s *Service) Handle(ctx context.Context, r Request) (*moh.DSResponse, error) {
	typ, ok := moh.PeekRequestType(r.Body)
	if !ok {
		return nil, moh.Errorf(moh.CodeMalformed, "decoding DSRequest: no protocol version and request type")
	}
	if typ.CarriesMLS() {
		// The MLS-carrying operations are not served yet; say so before
		// spending anything on decoding them.
		return nil, moh.Errorf(moh.CodeNotImplemented, "request type %s is not implemented yet", typ)
	}
	req, err := moh.DecodeDSRequest(r.Body)
	if err != nil {
		return nil, err
	}
	switch req.Body.Type {
	case moh.RequestGroupID:
		return s.requestGroupID(req)
	}
	return nil, moh.Errorf(moh.CodeNotImplemented, "request type %s is not implemented yet", req.Body.Type)
}

// requestGroupID answers request type 0 with GroupIDSize random bytes. It
// must be anonymous: a group id is not yet bound to anyone.
func (s *Service) requestGroupID(req *moh.DSRequest) (*moh.DSResponse, error) {
	if req.Auth.Type != moh.AuthAnonymous {
		return nil, moh.Errorf(moh.CodeMalformed, "request_group_id must be anonymous, not %s", authName(req.Auth.Type))
	}
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
