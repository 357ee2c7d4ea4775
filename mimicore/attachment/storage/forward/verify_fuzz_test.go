package forward_test

import (
	"errors"
	"math/big"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/forward"
)

// FuzzVerify checks a legacy backend's check of the signature headers of
// a request (Verify) with arbitrary Mimi-Timestamp and Mimi-Signature
// values, signed correctly or not: a request is accepted exactly when its
// timestamp is canonical decimal, within MaxClockSkew of now (computed
// here without time.Time), and its signature is the one Signature gives;
// any refusal is ErrUnauthorized or ErrStale.
//
//	go test -fuzz=FuzzVerify ./mimicore/attachment/storage/forward
func FuzzVerify(f *testing.F) {
	const base = 1767225600
	name := "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	for _, seed := range []struct {
		ts     string
		sig    string
		signIt bool
		delta  int32
	}{
		{strconv.Itoa(base), "", true, 0},
		{strconv.Itoa(base - 300), "", true, 0},
		{strconv.Itoa(base + 301), "", true, 0},
		{"+" + strconv.Itoa(base), "", true, 0},
		{"0" + strconv.Itoa(base), "", true, 0},
		{"-0", "", true, 0},
		{"9223372036854775807", "", true, 0},
		{"-9223372036854775808", "", true, 0},
		{strconv.Itoa(base), "v1=00", false, 0},
		{"", "", false, 0},
	} {
		f.Add(seed.ts, seed.sig, seed.signIt, http.MethodPut, int64(100), seed.delta)
	}
	maxSkew := big.NewInt(int64(forward.MaxClockSkew / time.Second))
	f.Fuzz(func(t *testing.T, ts, sig string, signIt bool, method string, length int64, delta int32) {
		now := int64(base) + int64(delta)
		parsed, perr := strconv.ParseInt(ts, 10, 64)
		if signIt && perr == nil {
			sig = forward.Signature(key, parsed, method, name, length)
		}
		r := &http.Request{Method: method, Header: http.Header{}}
		if ts != "" {
			r.Header.Set(forward.HeaderTimestamp, ts)
		}
		if sig != "" {
			r.Header.Set(forward.HeaderSignature, sig)
		}
		ts, sig = r.Header.Get(forward.HeaderTimestamp), r.Header.Get(forward.HeaderSignature)
		err := forward.Verify(r, key, name, length, time.Unix(now, 0))
		if err != nil && !errors.Is(err, forward.ErrUnauthorized) && !errors.Is(err, forward.ErrStale) {
			t.Fatalf("Verify refused with %v, neither ErrUnauthorized nor ErrStale", err)
		}
		parsed, perr = strconv.ParseInt(ts, 10, 64)
		signed := perr == nil && ts == strconv.FormatInt(parsed, 10) && sig == forward.Signature(key, parsed, method, name, length)
		skew := new(big.Int).Sub(big.NewInt(now), big.NewInt(parsed))
		within := skew.CmpAbs(maxSkew) <= 0
		if want := signed && within; (err == nil) != want {
			t.Fatalf("Verify(timestamp %q, signature %q, now %d) = %v; signed %v, within the skew %v", ts, sig, now, err, signed, within)
		}
	})
}
