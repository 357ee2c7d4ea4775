// Package privacypass implements the Privacy Pass origin and issuer roles
// for caddy-mimi, without any Caddy dependency: the RFC 9577 PrivateToken
// HTTP authentication scheme (challenges, tokens, header parsing and
// formatting) and the RFC 9578 issuance protocols for token types 0x0001
// (VOPRF P-384, privately verifiable) and 0x0002 (Blind RSA 2048, publicly
// verifiable), built on github.com/cloudflare/circl and the standard library.
//
// # Roles
//
// Origin mints challenges (Origin.WWWAuthenticate for the token_required answer) and
// redeems tokens (Origin.Redeem with the Authorization field value). Verifier
// is the stateless core it uses: key lookup by full token_key_id, challenge
// digest and authenticator. Issuer answers TokenRequests and publishes the
// issuer directory. NewTokenRequest/PendingToken is a client for Go peers and
// tests.
//
// # Errors
//
// Every error from this package that a request can cause is an *Error whose
// Reason names the failed check (ReasonMalformed, ReasonUnknownKey,
// ReasonChallengeDigest, ReasonAuthenticator, ReasonReplay, ...). Use
// ReasonOf or errors.Is with the Err* sentinels; the caller maps reasons to
// its answers (token_required with a fresh challenge for a missing token,
// unsupported_type and the token checks, backend_unavailable when the store
// failed, an issuance error otherwise).
//
// # Challenge state and double spending
//
// A token carries only SHA-256 of its challenge, so the origin must be able
// to list the digests it accepts. OriginConfig.Mode chooses how: ContextRandom
// (the default, per PROFILE §8) remembers per-challenge random contexts in a
// bounded in-memory registry, which does not survive a restart and is not
// shared in a cluster; ContextWindow derives contexts statelessly from an HMAC
// over a time slot, so nodes sharing the secret accept each other's
// challenges, also across restarts. See ContextMode for the details.
//
// After all cryptographic checks pass, the origin records SpentKey(token) in
// a SpentStore with an expiry equal to the end of the challenge's acceptance
// plus OriginConfig.ClockSkew; once the challenge is no longer accepted the
// digest check refuses the token anyway, so the record can go. With
// ContextWindow and a persistent secret, the store must be durable and shared
// by every node that shares the secret.
//
// # Keys
//
// Key holds a token key exactly as published (token_key_id is SHA-256 over
// those bytes, never over a re-encoding) and optionally the private key. Type
// 0x0002 keys are DER SubjectPublicKeyInfo with id-RSASSA-PSS, parsed and
// encoded by hand because crypto/x509 refuses that algorithm. Key files use
// the format of the pp-peer test peer (KeyFile).
package privacypass
