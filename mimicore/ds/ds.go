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
// Authenticate decodes every client request type, the MLS-carrying bodies
// included, and checks its DSAuthData (docs/protocol.md §5.1 and §5.4):
// the auth_type the request type accepts, the timestamp window, the client
// signature with the key of the sender's leaf in the group's current state
// (Groups) or of the joiner's KeyPackage (Joiners), and with it the
// sender's membership. Handle then records the signatures of attachment
// uploads, deletes and copies in the replay set (Seen), serves
// request_group_id, and runs the group operations on the durable group
// state (Store): create_group, the commit-carrying types (each checked
// with RFC 9420 public-state validation, DS -03's rules of its type and
// the client bindings of new leaves, then stored on condition that its
// epoch is still current, so one commit wins each epoch),
// self_remove_client, send_message (delivered to the members),
// welcome_info and external_commit_info. With Attachments set it serves
// the attachment types (attachments.go): Upload and Download stream, and
// Handle serves delete and copy.
package ds

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// GroupIDSize is the length of the group ids request_group_id hands out:
// 128 random bits.
const GroupIDSize = 16

// MaxClockSkew is how far a client signature's timestamp may be from the
// Delivery Service's clock, either way (docs/protocol.md §5.1), and how far
// beyond either end of its lifetime the clock may be when a commit adds a
// KeyPackage (docs/protocol.md §5.4.1).
const MaxClockSkew = 300 * time.Second

// ReplayWindow is how long the signatures of attachment uploads, deletes
// and copies are remembered: longer than the timestamp window on either
// side, so a captured request cannot be replayed while its timestamp is
// still accepted.
const ReplayWindow = 11 * time.Minute

// Service is the Delivery Service of one provider. It is safe for
// concurrent use. Its fields are set before first use and not changed
// afterwards; the zero value hosts no group, so it serves request_group_id
// and answers every signed request not_found.
type Service struct {
	// Groups looks up the groups hosted here, for client_signature. Nil
	// means none is hosted.
	Groups Groups
	// Joiners looks up the KeyPackages Welcomes added, for
	// key_package_signature. Nil makes welcome_info answer
	// not_implemented.
	Joiners Joiners
	// Seen is the replay set of the signed attachment uploads, deletes and
	// copies. Nil makes Handle answer those backend_unavailable.
	Seen store.SeenSignatures
	// Now is the clock of the timestamp window, of the client binding
	// checks and of the lifetimes of the KeyPackages commits add; nil
	// means time.Now.
	Now func() time.Time

	// MaxKeyPackageLifetime is the longest total lifetime (not_after -
	// not_before, in whole seconds) of a key_package leaf entering a group
	// hosted here: the KeyPackage of every Add a commit covers and the
	// creator's leaf of create_group; a longer one is refused invalid_mls
	// (RFC 9420 §7.2: applications define a maximum and reject any
	// LeafNode whose lifetime is longer). Zero means
	// mls.DefaultMaxLifetime; a negative value accepts any length, and is
	// only for replaying recorded third-party transcripts whose leaves
	// claim lifetimes of centuries.
	MaxKeyPackageLifetime time.Duration

	// Store is the durable state of the groups hosted here, which the
	// group operations load, check against and write. Nil makes every
	// group operation, welcome_info and external_commit_info answer
	// not_implemented. Groups is usually StoreGroups over the same store.
	Store Store
	// Providers are the provider domains this Delivery Service serves. A
	// group created here is hosted by the provider its creator's client
	// URI names (docs/protocol.md §9: clients create groups at their own
	// provider), which must be one of them; an identity that is not a
	// client URI (possible only with the binding check off) makes the
	// first one the hub.
	Providers []string
	// Bindings checks the client bindings of the leaves that enter or
	// change a group. Nil refuses every such leaf (unknown_key): a
	// Delivery Service never accepts unchecked leaves by omission; the
	// checker's own switch (binding.Checker.Unchecked) turns the check off.
	Bindings BindingChecker
	// QueueLimits bound each local client's queue that the fan-out of
	// accepted messages appends to; zero fields mean the store's
	// defaults.
	QueueLimits store.QueueLimits
	// DeliverToBackend makes the legacy backend the delivery target of
	// this provider's own clients (docs/protocol.md §11): what peers
	// deliver for them and the local members' copies of what this DS
	// accepts go to the outbox under store.BackendDestination, in the
	// same write, instead of to their queues and the group logs. False
	// (the default) delivers to the local queues.
	DeliverToBackend bool
	// Logger receives what the operator must know of and no peer may
	// see: deliveries a full queue refused, messages refused because
	// their group's recorded hub is another provider. Peers trigger
	// these, so it should be sampled. Nil discards it.
	Logger *zap.Logger
	// Outbound, when set, is told of each destination provider that an
	// accepted request left messages for in the outbox, after the write:
	// the federation sender's wake-up. It must not block.
	Outbound func(destination string)
	// PeerUp, when set, is told of each provider that a verified provider
	// request came from (it is reachable again), on every such request:
	// it must be cheap and must not block.
	PeerUp func(peer string)
	// KeyPackageLimits bounds how fast a peer claims one local user's
	// KeyPackages (group_key_packages, connection_key_packages). Nil
	// means no bound.
	KeyPackageLimits KeyPackageLimiter
	// Hubs remembers the hubs of other providers' groups for
	// deliver_message; nil reads the store for every message.
	Hubs *HubCache
	// HubConflict, when set, is told of each deliver_message or
	// connection_request refused because the group's recorded hub is
	// another provider than the sender (request is the request's name),
	// after it is logged: the operator's metric of hub conflicts. It must
	// not block.
	HubConflict func(request string)
	// Members remembers how each hosted group's members split into local
	// and remote clients; nil passes over every member for each post.
	Members *MemberViews
	// Attachments serves uploads, downloads, deletes and copies
	// (attachments.go). Nil answers them not_implemented.
	Attachments *Attachments
}

// logger is s.Logger, or a logger that discards.
func (s *Service) logger() *zap.Logger {
	if s.Logger == nil {
		return zap.NewNop()
	}
	return s.Logger
}

// Store is the durable state the Delivery Service works on: the groups it
// hosts, the local clients' queues that the messages peers deliver go to,
// and the KeyPackage directory that peers claim from. The fan-out of what
// the DS accepts is written by the group store itself, in the write that
// accepts it (store.Fanout).
type Store interface {
	store.GroupStore
	store.Queues
	store.KeyPackages
	store.OutboxAdder
}

// Request is an authenticated client request.
type Request struct {
	// Body is the decoded DSRequest.
	Body *moh.DSRequest
	// GroupID and Member name the group and the member that the client
	// signature was verified for: the keys of the admission policy's
	// group and member zones. Member is the identity of the credential of
	// the sender's leaf, whose key verified the request: its client URI,
	// checked against its client binding when the leaf joined, the same
	// across the member's changes of signature key. For create_group it
	// is the creator's LeafNode's signature key, since that LeafNode's
	// credential is not checked yet when the zones run; for
	// key_package_signature the joiner's KeyPackage leaf key. Both are
	// empty for an anonymous request, which no such zone can key.
	GroupID, Member []byte
	// Source is the address the request came from, as the HTTP layer
	// determines the client IP; fetches of other providers' keys for
	// client bindings are charged to it. The caller sets it between
	// Authenticate and Handle; the zero value means unknown.
	Source netip.Addr

	// state is the group state the client signature was verified
	// against: the base of the operation, so that a commit is stored only
	// if the group is still in that state.
	state *mls.GroupState
}

// Authenticate decodes an encoded DSRequest and checks its authentication
// (docs/protocol.md §5.4, steps 4 to 6): the whole request must decode, its
// auth_type must be one its type accepts (malformed), a signed request's
// timestamp must be within MaxClockSkew of Now (stale_timestamp), and its
// signature must verify with the key of leaf sender_index in the group's
// current state, or of the KeyPackage key_package_ref (bad_signature). An
// unknown group, a sender_index without a member and an unknown
// KeyPackage all answer not_found, alike. For attachment_copy the
// signature key must also sit at target_sender_index in the target group
// (not_found otherwise).
//
// Anonymous requests are accepted for the types that allow them:
// request_group_id, and external_join, whose MLS commit authenticates
// itself when it is processed. An anonymous external_commit_info is
// not_found: no group enables open external joins in this build.
//
// The caller has checked that the request type is one the endpoint
// accepts (moh.PeekHeader).
func (s *Service) Authenticate(ctx context.Context, body []byte) (*Request, error) {
	req, err := moh.DecodeDSRequest(body) // malformed, or unsupported_version
	if err != nil {
		return nil, err
	}
	return s.authenticate(ctx, req)
}

// AuthenticatePrefix is Authenticate for the DSRequest at the start of
// data, which an attachment upload's content follows; it also returns the
// number of bytes the request took.
func (s *Service) AuthenticatePrefix(ctx context.Context, data []byte) (*Request, int, error) {
	req, n, err := moh.DecodeDSRequestPrefix(data)
	if err != nil {
		return nil, 0, err
	}
	r, err := s.authenticate(ctx, req)
	if err != nil {
		return nil, 0, err
	}
	return r, n, nil
}

// Handle processes an authenticated request. The signatures of attachment
// deletes and copies are first recorded in the replay set (Upload records
// an upload's): a second request with the same signed bytes within
// ReplayWindow is answered replay, but for the retry of a copy that
// succeeded, which gets the first answer (checkReplayAnswered). Uploads
// and downloads stream, through Upload and Download.
func (s *Service) Handle(ctx context.Context, r *Request) (*moh.DSResponse, error) {
	switch typ := r.Body.Body.Type; typ {
	case moh.RequestGroupID:
		return s.requestGroupID()
	case moh.AttachmentCopy:
		ta, first, err := s.checkReplayAnswered(ctx, r.Body)
		if err != nil || first != nil {
			return first, err
		}
		if s.Attachments == nil {
			return nil, errNoAttachments()
		}
		return s.copyAttachment(ctx, s.Attachments, r, ta)
	case moh.AttachmentUpload, moh.AttachmentDelete:
		if err := s.checkReplay(ctx, r.Body); err != nil {
			return nil, err
		}
		if s.Attachments == nil {
			return nil, errNoAttachments()
		}
		if typ == moh.AttachmentUpload {
			return nil, moh.Errorf(moh.CodeWrongRequestType, "an upload is served by Upload, not Handle")
		}
		return s.handleAttachment(ctx, r)
	case moh.AttachmentDownload:
		if s.Attachments == nil {
			return nil, errNoAttachments()
		}
		return nil, moh.Errorf(moh.CodeWrongRequestType, "a download is served by Download, not Handle")
	default:
		return s.handleGroupOp(ctx, r)
	}
}

// checkReplay records the signed bytes of req in the replay set, and
// refuses them when they are already there.
//
// The set is keyed on SHA-256 of DSRequestTBS rather than of the signature
// itself: an ECDSA signature can be altered into another valid one
// without the key (s into n-s), so a replay keyed on signatures could be
// sent again with the altered signature. Two requests with the same signed
// bytes are the same request, whatever their signatures.
func (s *Service) checkReplay(ctx context.Context, req *moh.DSRequest) error {
	_, err := s.recordSignature(ctx, req)
	return err
}

// recordSignature is checkReplay, and returns the request's signed bytes.
func (s *Service) recordSignature(ctx context.Context, req *moh.DSRequest) ([]byte, error) {
	if s.Seen == nil {
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "no replay set is configured")
	}
	tbs, err := req.SignedBytes()
	if err != nil {
		return nil, fmt.Errorf("recording the request signature: %w", err)
	}
	first, err := s.Seen.SeenSignature(ctx, sha256.Sum256(tbs), s.now().Add(ReplayWindow))
	if err != nil {
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "recording the request signature: %w", err)
	}
	if !first {
		return tbs, moh.Errorf(moh.CodeReplay, "this %s request was already received", req.Body.Type)
	}
	return tbs, nil
}

// checkReplayAnswered is checkReplay for an attachment upload or copy,
// whose byte-identical retry within ReplayWindow gets the first answer
// once the first succeeded (docs/protocol.md §5.1): it returns that answer
// when there is one (the retry is then done), else the replay refusal of
// a retry whose first is in progress or failed. On first use it returns
// what the success is to record with the request's signature.
func (s *Service) checkReplayAnswered(ctx context.Context, req *moh.DSRequest) (tokenAnswer, *moh.DSResponse, error) {
	tbs, err := s.recordSignature(ctx, req)
	if tbs == nil {
		return tokenAnswer{}, nil, err
	}
	ta := tokenAnswer{digest: sha256.Sum256(tbs), mask: answerMask(tbs)}
	if err == nil {
		return ta, nil, nil
	}
	body, lerr := s.Seen.SignatureAnswer(ctx, ta.digest)
	switch {
	case errors.Is(lerr, store.ErrNotFound):
		return tokenAnswer{}, nil, err
	case lerr != nil:
		return tokenAnswer{}, nil, moh.Errorf(moh.CodeBackendUnavailable, "reading the answer of the request: %w", lerr)
	}
	if len(body) != AttachmentTokenSize {
		return tokenAnswer{}, nil, moh.Errorf(moh.CodeBackendUnavailable, "the recorded answer of the request is %d bytes, want %d", len(body), AttachmentTokenSize)
	}
	return tokenAnswer{}, &moh.DSResponse{Type: moh.ResponseAttachmentToken, Token: ta.unmask(body)}, nil
}

// tokenAnswer is the answer of an upload or copy, attachment_token(7),
// as recorded with its request's signature. The token is stored masked,
// XORed with a key derived from the request's signed bytes, which the
// store does not hold (only their SHA-256): the store keeps no bearer
// secret it could give away, and a retry, which sends the same bytes,
// unmasks it.
type tokenAnswer struct {
	digest [32]byte
	mask   [AttachmentTokenSize]byte
}

// answerMask derives the mask of the token answered to the request whose
// signed bytes are tbs.
func answerMask(tbs []byte) [AttachmentTokenSize]byte {
	h := sha256.New()
	h.Write([]byte("caddy-mimi attachment token answer mask\x00"))
	h.Write(tbs)
	return [AttachmentTokenSize]byte(h.Sum(nil))
}

// record returns the SignatureAnswer that records token.
func (ta tokenAnswer) record(token []byte) store.SignatureAnswer {
	return store.SignatureAnswer{Digest: ta.digest, Body: ta.unmask(token)}
}

// unmask XORs b (AttachmentTokenSize bytes) with the mask; it also masks.
func (ta tokenAnswer) unmask(b []byte) []byte {
	out := make([]byte, AttachmentTokenSize)
	for i := range out {
		out[i] = b[i] ^ ta.mask[i]
	}
	return out
}

// now reads the service's clock.
func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// maxLifetime returns the longest total lifetime of a key_package leaf
// entering a group (MaxKeyPackageLifetime), as
// mls.ApplyOptions.MaxLifetime takes it: zero for no maximum.
func (s *Service) maxLifetime() time.Duration {
	switch {
	case s.MaxKeyPackageLifetime == 0:
		return mls.DefaultMaxLifetime
	case s.MaxKeyPackageLifetime < 0:
		return 0
	}
	return s.MaxKeyPackageLifetime
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

// ProcessProvider is the provider.Processor of every provider request
// type (docs/protocol.md §4), chosen by the verified request's type:
// deliver_message hands the message to local queues (deliverMessage),
// connection_request hands a connection Welcome to a local user's clients
// (connectionRequest), group_key_packages and connection_key_packages
// claim from the KeyPackage directory. Every
// request tells PeerUp that its sender is reachable. A caller keeps the
// method value once (it is on the hot path of every provider request).
func (s *Service) ProcessProvider(ctx context.Context, v *provider.Verified) (*moh.DSResponse, error) {
	if s.PeerUp != nil {
		s.PeerUp(string(v.Request.Sender))
	}
	switch typ := v.Request.RequestType; typ {
	case moh.DeliverMessage:
		return s.deliverMessage(ctx, v)
	case moh.GroupKeyPackages:
		return s.groupKeyPackages(ctx, v)
	case moh.ConnectionKeyPackages:
		return s.connectionKeyPackages(ctx, v)
	case moh.ConnectionRequest:
		return s.connectionRequest(ctx, v)
	default:
		return nil, moh.Errorf(moh.CodeNotImplemented, "%s is not implemented yet", typ)
	}
}
