package privacypass

import (
	"crypto/rand"
	"fmt"

	"github.com/cloudflare/circl/blindsign/blindrsa"
	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/oprf"
	"github.com/cloudflare/circl/zk/dleq"
)

// PendingToken is the client side of one issuance (RFC 9578 §5.1, §6.1):
// it holds the TokenRequest to send and the blinding state needed to turn
// the issuer's TokenResponse into a Token. The gateway itself never acts as
// a client; this exists for peers written in Go and for end-to-end tests.
type PendingToken struct {
	// Request is the encoded TokenRequest to POST to the issuer.
	Request []byte

	token    Token
	key      *Key
	rsaState blindrsa.State
	rsaCli   blindrsa.Client
	oprfCli  oprf.VerifiableClient
	finData  *oprf.FinalizeData
}

// NewTokenRequest starts issuance of one token that answers the encoded
// challenge, under the issuer's public key k, with a fresh random nonce.
func NewTokenRequest(challenge []byte, k *Key) (*PendingToken, error) {
	if k == nil {
		return nil, newError(ReasonInvalidConfig, "requesting token: nil key")
	}
	if len(challenge) < 2 || TokenType(uint16(challenge[0])<<8|uint16(challenge[1])) != k.typ {
		return nil, newError(ReasonMalformed, "requesting token: challenge is not of token type %s", k.typ)
	}
	p := &PendingToken{key: k}
	p.token.TokenType = k.typ
	if _, err := rand.Read(p.token.Nonce[:]); err != nil {
		return nil, fmt.Errorf("generating nonce: %w", err)
	}
	p.token.ChallengeDigest = ChallengeDigest(challenge)
	p.token.TokenKeyID = k.id
	input := p.token.AuthenticatorInput()
	req := TokenRequest{TokenType: k.typ, TruncatedKeyID: k.TruncatedID()}
	switch k.typ {
	case TypeBlindRSA:
		c, err := blindrsa.NewClient(blindrsa.SHA384PSSDeterministic, k.rsaPub)
		if err != nil {
			return nil, fmt.Errorf("creating blind rsa client: %w", err)
		}
		prepared, err := c.Prepare(rand.Reader, input)
		if err != nil {
			return nil, fmt.Errorf("preparing message: %w", err)
		}
		blinded, st, err := c.Blind(rand.Reader, prepared)
		if err != nil {
			return nil, fmt.Errorf("blinding message: %w", err)
		}
		p.rsaCli, p.rsaState, req.BlindedMsg = c, st, blinded
	case TypeVOPRF:
		c := oprf.NewVerifiableClient(oprf.SuiteP384, k.oprfPub)
		fin, evalReq, err := c.Blind([][]byte{input})
		if err != nil {
			return nil, fmt.Errorf("blinding input: %w", err)
		}
		b, err := evalReq.Elements[0].MarshalBinaryCompress()
		if err != nil {
			return nil, fmt.Errorf("encoding blinded element: %w", err)
		}
		p.oprfCli, p.finData, req.BlindedMsg = c, fin, b
	default:
		return nil, newError(ReasonUnsupportedType, "requesting token: token type %s", k.typ)
	}
	p.Request = req.Marshal()
	return p, nil
}

// Finalize turns the issuer's encoded TokenResponse into a Token, verifying
// the blind signature (0x0002) or the DLEQ proof (0x0001).
func (p *PendingToken) Finalize(response []byte) (*Token, error) {
	t := p.token
	switch p.key.typ {
	case TypeBlindRSA:
		if len(response) != blindRSAAuthenticatorSize {
			return nil, newError(ReasonMalformed, "finalizing token: response is %d bytes, want %d", len(response), blindRSAAuthenticatorSize)
		}
		sig, err := p.rsaCli.Finalize(p.rsaState, response)
		if err != nil {
			return nil, wrapError(ReasonAuthenticator, "finalizing blind signature", err)
		}
		t.Authenticator = sig
	case TypeVOPRF:
		if len(response) != voprfElementSize+voprfProofSize {
			return nil, newError(ReasonMalformed, "finalizing token: response is %d bytes, want %d", len(response), voprfElementSize+voprfProofSize)
		}
		e := group.P384.NewElement()
		if err := e.UnmarshalBinary(response[:voprfElementSize]); err != nil {
			return nil, wrapError(ReasonMalformed, "parsing evaluated element", err)
		}
		proof := new(dleq.Proof)
		if err := proof.UnmarshalBinary(group.P384, response[voprfElementSize:]); err != nil {
			return nil, wrapError(ReasonMalformed, "parsing dleq proof", err)
		}
		out, err := p.oprfCli.Finalize(p.finData, &oprf.Evaluation{Elements: []oprf.Evaluated{e}, Proof: proof})
		if err != nil {
			return nil, wrapError(ReasonAuthenticator, "finalizing voprf", err)
		}
		t.Authenticator = out[0]
	}
	return &t, nil
}
