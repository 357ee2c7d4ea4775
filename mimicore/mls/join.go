package mls

import (
	"bytes"
	"crypto/cipher"
	"crypto/hpke"
	"errors"
	"fmt"
	"strings"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// ErrNotForUs is returned when a Welcome holds no secrets for the given
// KeyPackage.
var ErrNotForUs = errors.New("mls: welcome not addressed to this key package")

// PSKLookup returns the secret of a PSK named in a Welcome or commit, or an
// error when the PSK is unknown.
type PSKLookup func(id *PreSharedKeyID) ([]byte, error)

// WelcomeResult is what a new member learns from a Welcome (RFC 9420
// §12.4.3.1). The GroupInfo's signature is not yet checked: its signer's
// key is in the ratchet tree, which may come out of band; see
// NewGroupState.
type WelcomeResult struct {
	GroupSecrets GroupSecrets
	GroupInfo    GroupInfo
	Secrets      *EpochSecrets
	PSKSecret    []byte
}

// ProcessWelcome decrypts the GroupSecrets meant for kp with its init
// private key, derives the welcome key, decrypts the GroupInfo, runs the
// key schedule of the new epoch and checks the GroupInfo's confirmation
// tag. psks resolves the PSKs the GroupSecrets name (it may be nil when
// there are none). A Welcome naming a reinit PSK is not checked against
// the old group's ReInit here: JoinFromWelcome does that
// (WelcomeOptions.ReInit).
func ProcessWelcome(w *Welcome, kp *KeyPackage, initPriv hpke.PrivateKey, psks PSKLookup) (*WelcomeResult, error) {
	cs := w.CipherSuite
	s, err := cs.params()
	if err != nil {
		return nil, fmt.Errorf("processing welcome: %w", err)
	}
	if kp.CipherSuite != cs {
		return nil, fmt.Errorf("processing welcome: cipher suite %d, key package uses %d", cs, kp.CipherSuite)
	}
	ref, err := kp.Ref()
	if err != nil {
		return nil, fmt.Errorf("processing welcome: %w", err)
	}
	var egs *EncryptedGroupSecrets
	for i := range w.Secrets {
		if bytes.Equal(w.Secrets[i].NewMember, ref) {
			egs = &w.Secrets[i]
			break
		}
	}
	if egs == nil {
		return nil, ErrNotForUs
	}
	pt, err := s.decryptWithLabel(initPriv, "Welcome", w.EncryptedGroupInfo, egs.EncryptedGroupSecrets)
	if err != nil {
		return nil, fmt.Errorf("processing welcome: %w", err)
	}
	res := &WelcomeResult{}
	if err := wire.Unmarshal(pt, &res.GroupSecrets, "group secrets"); err != nil {
		return nil, fmt.Errorf("processing welcome: %w", err)
	}
	gs := &res.GroupSecrets
	// A resumption PSK of usage reinit or branch starts a group that
	// continues another (RFC 9420 §11.2, §11.3): it must be the only one
	// of those usages, and the Welcome must be of the new group's first
	// epoch (§12.4.3.1), checked once the GroupInfo is decrypted.
	continued := 0
	for i := range gs.PSKs {
		if id := &gs.PSKs[i]; id.Type == PSKResumption && (id.Usage == ResumptionReInit || id.Usage == ResumptionBranch) {
			continued++
		}
	}
	if continued > 1 {
		return nil, fmt.Errorf("%w: welcome names %d PSKs of usage reinit or branch, at most 1", ErrInvalidMessage, continued)
	}
	var list []PSKWithSecret
	for i := range gs.PSKs {
		if psks == nil {
			return nil, errors.New("processing welcome: psk required but no lookup given")
		}
		secret, err := psks(&gs.PSKs[i])
		if err != nil {
			return nil, fmt.Errorf("processing welcome: psk %d: %w", i, err)
		}
		list = append(list, PSKWithSecret{ID: gs.PSKs[i], PSK: secret})
	}
	if res.PSKSecret, err = cs.PSKSecret(list); err != nil {
		return nil, fmt.Errorf("processing welcome: %w", err)
	}
	aead, nonce, err := s.welcomeAEAD(gs.JoinerSecret, res.PSKSecret)
	if err != nil {
		return nil, fmt.Errorf("processing welcome: %w", err)
	}
	giBytes, err := aead.Open(nil, nonce, w.EncryptedGroupInfo, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: group info does not decrypt", ErrInvalidMessage)
	}
	if err := wire.Unmarshal(giBytes, &res.GroupInfo, "group info"); err != nil {
		return nil, fmt.Errorf("processing welcome: %w", err)
	}
	gc := &res.GroupInfo.GroupContext
	if gc.CipherSuite != cs || gc.Version != MLS10 {
		return nil, fmt.Errorf("processing welcome: group info has suite %d version %d", gc.CipherSuite, gc.Version)
	}
	if continued == 1 && gc.Epoch != 1 {
		return nil, fmt.Errorf("%w: welcome names a PSK of usage reinit or branch for epoch %d, not the new group's first, 1", ErrInvalidMessage, gc.Epoch)
	}
	if res.Secrets, err = cs.EpochSecretsFromJoiner(gs.JoinerSecret, res.PSKSecret, gc); err != nil {
		return nil, fmt.Errorf("processing welcome: %w", err)
	}
	if !s.verifyMAC(res.Secrets.ConfirmationKey, gc.ConfirmedTranscriptHash, res.GroupInfo.ConfirmationTag) {
		return nil, fmt.Errorf("%w: group info confirmation tag", ErrInvalidMessage)
	}
	return res, nil
}

// welcomeAEAD returns the AEAD and nonce that protect a Welcome's GroupInfo
// (RFC 9420 §12.4.3.1): welcome_secret = DeriveSecret(Extract(joiner_secret,
// psk_secret), "welcome"), then its "key" and "nonce".
func (s *suite) welcomeAEAD(joinerSecret, pskSecret []byte) (cipher.AEAD, []byte, error) {
	member, err := s.extract(joinerSecret, pskSecret)
	if err != nil {
		return nil, nil, err
	}
	welcomeSecret, err := s.deriveSecret(member, "welcome")
	if err != nil {
		return nil, nil, err
	}
	key, err := s.expandWithLabel(welcomeSecret, "key", nil, s.nk)
	if err != nil {
		return nil, nil, err
	}
	nonce, err := s.expandWithLabel(welcomeSecret, "nonce", nil, s.nn)
	if err != nil {
		return nil, nil, err
	}
	aead, err := s.newAEAD(key)
	if err != nil {
		return nil, nil, err
	}
	return aead, nonce, nil
}

// ErrReInitMismatch is wrapped by JoinFromWelcome's refusals of a Welcome
// that does not join the group a ReInit named (RFC 9420 §11.2): a Welcome
// naming a reinit PSK without WelcomeOptions.ReInit, one naming none with
// it, and a new group whose group_id, version, cipher_suite or extensions
// differ from the ReInit's.
var ErrReInitMismatch = errors.New("mls: welcome does not match the reinitialization")

// reinitPSK returns the resumption PSK of usage reinit gs names, or nil.
// ProcessWelcome has checked that there is at most one.
func (gs *GroupSecrets) reinitPSK() *PreSharedKeyID {
	for i := range gs.PSKs {
		if id := &gs.PSKs[i]; id.Type == PSKResumption && id.Usage == ResumptionReInit {
			return id
		}
	}
	return nil
}

// checkReInitJoin checks a Welcome against want, the ReInit of the old
// group the caller expects it to continue (nil when it expects none):
// with a reinit PSK in gs the new group's GroupContext gc must have
// exactly want's group_id, version, cipher_suite and extensions (RFC 9420
// §11.2, as mls-rs compares them). The PSK names the old group and the
// ReInit the new one, so the ReInit's group_id is compared with the new
// GroupContext's, never with the PSK's psk_group_id; that the PSK is the
// old group's at the epoch want closed is for the caller's PSKLookup,
// which resolves it, to know.
func checkReInitJoin(gs *GroupSecrets, gc *GroupContext, want *ReInit) error {
	psk := gs.reinitPSK()
	switch {
	case psk == nil && want == nil:
		return nil
	case psk == nil:
		return fmt.Errorf("%w: a ReInit was given but the welcome names no reinit psk", ErrReInitMismatch)
	case want == nil:
		return fmt.Errorf("%w: the welcome names the reinit psk of group %x epoch %d but no ReInit was given",
			ErrReInitMismatch, psk.PSKGroupID, psk.PSKEpoch)
	}
	var diffs []string
	if !bytes.Equal(gc.GroupID, want.GroupID) {
		diffs = append(diffs, fmt.Sprintf("group_id %x, not %x", gc.GroupID, want.GroupID))
	}
	if gc.Version != want.Version {
		diffs = append(diffs, fmt.Sprintf("version %d, not %d", gc.Version, want.Version))
	}
	if gc.CipherSuite != want.CipherSuite {
		diffs = append(diffs, fmt.Sprintf("cipher suite %d, not %d", gc.CipherSuite, want.CipherSuite))
	}
	got, err := marshal(&gc.Extensions)
	if err != nil {
		return fmt.Errorf("encoding the group context extensions: %w", err)
	}
	named, err := marshal(&want.Extensions)
	if err != nil {
		return fmt.Errorf("encoding the ReInit's extensions: %w", err)
	}
	if !bytes.Equal(got, named) {
		types := func(l Extensions) []ExtensionType {
			out := make([]ExtensionType, len(l))
			for i, e := range l {
				out[i] = e.Type
			}
			return out
		}
		diffs = append(diffs, fmt.Sprintf("other group context extensions (of types %v) than the ReInit's (of types %v)",
			types(gc.Extensions), types(want.Extensions)))
	}
	if len(diffs) > 0 {
		return fmt.Errorf("%w: the new group has %s", ErrReInitMismatch, strings.Join(diffs, "; "))
	}
	return nil
}
