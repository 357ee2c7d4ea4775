package ds

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// notFoundMessage is the one message of every not_found answer of
// Authenticate, so that an unknown group, a sender who is not a member and
// an unknown KeyPackage read alike.
const notFoundMessage = "no such group, or the sender is not a member"

// errNotFound is the answer to a request for a group the sender may not
// see.
func errNotFound() error { return moh.Errorf(moh.CodeNotFound, notFoundMessage) }

// authenticate checks the DSAuthData of a decoded request.
func (s *Service) authenticate(ctx context.Context, req *moh.DSRequest) (*Request, error) {
	if err := checkAuthType(&req.Body, &req.Auth); err != nil {
		return nil, err
	}
	switch req.Auth.Type {
	case moh.AuthAnonymous:
		if req.Body.Type == moh.ExternalCommitInfo {
			// Open external joins are a per-group admin setting that this
			// build does not have: no group allows an anonymous request.
			return nil, errNotFound()
		}
		return &Request{Body: req}, nil
	case moh.AuthClientSignature:
		if err := s.checkTimestamp(req.Auth.Timestamp); err != nil {
			return nil, err
		}
		return s.authClient(ctx, req)
	default: // moh.AuthKeyPackageSignature, the only one left
		if err := s.checkTimestamp(req.Auth.Timestamp); err != nil {
			return nil, err
		}
		return s.authJoiner(ctx, req)
	}
}

// checkAuthType refuses an auth_type that the request type does not accept
// (docs/protocol.md §5.3) as malformed.
func checkAuthType(body *moh.RequestBody, a *moh.AuthData) error {
	typ := body.Type
	var want moh.AuthType
	switch typ {
	case moh.RequestGroupID, moh.ExternalJoin:
		want = moh.AuthAnonymous
	case moh.WelcomeInfo:
		want = moh.AuthKeyPackageSignature
	case moh.ExternalCommitInfo:
		if a.Type == moh.AuthAnonymous {
			return nil
		}
		want = moh.AuthClientSignature
	default:
		want = moh.AuthClientSignature
	}
	if a.Type != want {
		return moh.Errorf(moh.CodeMalformed, "%s must be %s, not %s", typ, authName(want), authName(a.Type))
	}
	if typ == moh.CreateGroup && a.SenderIndex != 0 {
		return moh.Errorf(moh.CodeMalformed, "create_group must be signed with sender_index 0, not %d", a.SenderIndex)
	}
	return nil
}

// checkTimestamp refuses a timestamp more than MaxClockSkew from the
// clock.
func (s *Service) checkTimestamp(ts uint64) error {
	now := s.now().Unix()
	skew := int64(MaxClockSkew / time.Second)
	if ts > math.MaxInt64 || int64(ts) < now-skew || int64(ts) > now+skew {
		return moh.Errorf(moh.CodeStaleTimestamp, "timestamp %d is more than %d s from the Delivery Service's clock", ts, skew)
	}
	return nil
}

// authClient checks a client_signature: with the creator's LeafNode key
// for create_group, otherwise with the key of leaf sender_index in the
// group's current state.
func (s *Service) authClient(ctx context.Context, req *moh.DSRequest) (*Request, error) {
	groupID := req.Body.GroupID()
	if req.Body.Type == moh.CreateGroup {
		cg := &req.Body.CreateGroup
		cs := cg.GroupInfo.GroupInfo.GroupContext.CipherSuite
		if !cs.Supported() {
			return nil, moh.Errorf(moh.CodeMalformed, "create_group: cipher suite %d is not supported", uint16(cs))
		}
		key := cg.LeafNode.SignatureKey
		if err := verify(cs, key, req); err != nil {
			return nil, err
		}
		// The LeafNode's credential is not verified yet (its client
		// binding is checked with the group, step 10): keyed on it, a
		// create_group signed by any key could spend the member zone of
		// the client it names. The signature key is what this request
		// proves.
		return &Request{Body: req, GroupID: groupID, Member: key}, nil
	}
	g, err := s.group(ctx, groupID)
	if err != nil {
		return nil, err
	}
	leaf, ok := g.Member(req.Auth.SenderIndex)
	if !ok || leaf.IsBlank() {
		return nil, errNotFound()
	}
	key := leaf.SignatureKey()
	if err := verify(g.CipherSuite(), key, req); err != nil {
		return nil, err
	}
	if req.Body.Type == moh.AttachmentCopy {
		// The copy's signer must also be a member of the target group,
		// with the same signature key at target_sender_index.
		target, err := s.group(ctx, req.Body.Copy.TargetGroupID)
		if err != nil {
			return nil, err
		}
		if leaf, ok := target.Member(req.Body.Copy.TargetSenderIndex); !ok || !leaf.HasSignatureKey(key) {
			return nil, errNotFound()
		}
	}
	return &Request{Body: req, GroupID: groupID, Member: memberName(leaf.Credential().Identity, key), state: g}, nil
}

// memberName is the Member of a client-signed request: the identity of
// the sender's credential (its client URI, checked against its client
// binding when the leaf joined), which stays the member's when it changes
// its signature key (update_client), so that a member cannot leave its
// member zone's bucket by changing keys; the signature key when the
// credential names none.
func memberName(identity, key []byte) []byte {
	if len(identity) > 0 {
		return identity
	}
	return key
}

// authJoiner checks a key_package_signature of welcome_info with the leaf
// key of the KeyPackage that the Welcome of that epoch added.
func (s *Service) authJoiner(ctx context.Context, req *moh.DSRequest) (*Request, error) {
	wi := &req.Body.WelcomeInfo
	if s.Joiners == nil {
		return nil, moh.Errorf(moh.CodeNotImplemented, "welcome_info: this Delivery Service does not keep the KeyPackages its Welcomes added")
	}
	cs, key, err := s.Joiners.JoinerKey(ctx, wi.GroupID, wi.Epoch, req.Auth.KeyPackageRef)
	if errors.Is(err, ErrNotFound) {
		return nil, errNotFound()
	}
	if err != nil {
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "looking up the joiner's KeyPackage: %w", err)
	}
	if err := verify(cs, key, req); err != nil {
		return nil, err
	}
	return &Request{Body: req, GroupID: wi.GroupID, Member: key}, nil
}

// group returns the current state of group id, not_found when it is not
// hosted here.
func (s *Service) group(ctx context.Context, id []byte) (*mls.GroupState, error) {
	if s.Groups == nil {
		return nil, errNotFound()
	}
	g, err := s.Groups.Group(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, errNotFound()
	}
	if err != nil {
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "looking up the group: %w", err)
	}
	return g, nil
}

// verify checks req's signature over its DSRequestTBS, as received, with
// key under suite cs.
func verify(cs mls.CipherSuite, key []byte, req *moh.DSRequest) error {
	tbs, err := req.SignedBytes()
	if err != nil {
		return fmt.Errorf("verifying the client signature: %w", err)
	}
	if err := cs.VerifyWithLabel(key, moh.DSRequestLabel, tbs, req.Auth.Signature); err != nil {
		return moh.Errorf(moh.CodeBadSignature, "the %s signature does not verify", authName(req.Auth.Type))
	}
	return nil
}

// ClientSignature returns the DSAuthData of a client_signature by the
// member at leaf senderIndex, timestamped now, for SignRequest.
func ClientSignature(senderIndex uint32, now time.Time) moh.AuthData {
	return moh.AuthData{Type: moh.AuthClientSignature, SenderIndex: senderIndex, Timestamp: unixSeconds(now)}
}

// KeyPackageSignature returns the DSAuthData of a key_package_signature by
// the holder of the KeyPackage whose reference is ref, timestamped now, for
// SignRequest.
func KeyPackageSignature(ref []byte, now time.Time) moh.AuthData {
	return moh.AuthData{Type: moh.AuthKeyPackageSignature, KeyPackageRef: ref, Timestamp: unixSeconds(now)}
}

// unixSeconds is t in seconds since the Unix epoch, 0 before it.
func unixSeconds(t time.Time) uint64 {
	if s := t.Unix(); s > 0 {
		return uint64(s)
	}
	return 0
}

// SignRequest returns the encoded DSRequest of body and auth, signed as
// docs/protocol.md §5.1 says: SignWithLabel(signer, "MIMI DS request",
// DSRequestTBS) with the signature scheme of cs, the group's cipher suite
// (for create_group, the new group's). auth is a client_signature or a
// key_package_signature (see ClientSignature and KeyPackageSignature); its
// Signature field is ignored. signer holds the private key of the leaf
// signature key the Delivery Service will verify with.
func SignRequest(cs mls.CipherSuite, signer crypto.Signer, body moh.RequestBody, auth moh.AuthData) ([]byte, error) {
	if auth.Type != moh.AuthClientSignature && auth.Type != moh.AuthKeyPackageSignature {
		return nil, fmt.Errorf("signing a DS request: auth type %s carries no signature", authName(auth.Type))
	}
	req := &moh.DSRequest{Body: body, Auth: auth}
	tbs, err := req.SignedBytes()
	if err != nil {
		return nil, fmt.Errorf("signing a DS request: %w", err)
	}
	if req.Auth.Signature, err = cs.SignWithLabel(signer, moh.DSRequestLabel, tbs); err != nil {
		return nil, fmt.Errorf("signing a DS request: %w", err)
	}
	out, err := wire.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("signing a DS request: %w", err)
	}
	return out, nil
}
