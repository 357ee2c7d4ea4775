package provider

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
)

// openSQLite opens a store on a file in dir and closes it when t ends.
func openSQLite(t *testing.T, dir string) *sqlitestore.Store {
	t.Helper()
	s, err := sqlitestore.Open(context.Background(), filepath.Join(dir, "mimi.db"))
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func sealer(t *testing.T, b byte) *KeySealer {
	t.Helper()
	s, err := NewKeySealer(bytes.Repeat([]byte{b}, KeySecretSize))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func storeRing(t *testing.T, st store.Store, sl *KeySealer, opts KeyRingOptions, now time.Time) (*KeyRing, error) {
	t.Helper()
	opts.Metadata, opts.Leases, opts.Sealer = st, st, sl
	return OpenKeyRing(t.Context(), "", opts, now)
}

func sameKeys(t *testing.T, what string, a, b []moh.VerificationKey) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: %d and %d published keys", what, len(a), len(b))
	}
	for i := range a {
		if !bytes.Equal(a[i].KeyID, b[i].KeyID) {
			t.Fatalf("%s: published key %d differs: %x and %x", what, i, a[i].KeyID, b[i].KeyID)
		}
	}
}

func TestKeySealer(t *testing.T) {
	k, err := GenerateKey(moh.SchemeEd25519, t0, t0.Add(time.Hour))
	must(t, err)
	sealed, err := sealer(t, 1).Seal(k)
	must(t, err)
	if bytes.Contains(sealed, k.public) {
		t.Fatalf("sealed key holds the public key in the clear; the private key may be too")
	}
	got, err := sealer(t, 1).Open(sealed, k.ID, k.Scheme)
	must(t, err)
	if !bytes.Equal(got.ID, k.ID) || !got.NotAfter.Equal(k.NotAfter) {
		t.Fatalf("opened key %x (not after %v), want %x (%v)", got.ID, got.NotAfter, k.ID, k.NotAfter)
	}
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)-1] ^= 1
	otherID := bytes.Clone(k.ID)
	otherID[0] ^= 1
	for _, c := range []struct {
		name   string
		s      *KeySealer
		sealed []byte
		id     []byte
		scheme moh.SignatureScheme
	}{
		{"wrong secret", sealer(t, 2), sealed, k.ID, k.Scheme},
		{"altered bytes", sealer(t, 1), flipped, k.ID, k.Scheme},
		{"other key id", sealer(t, 1), sealed, otherID, k.Scheme},
		{"other scheme", sealer(t, 1), sealed, k.ID, moh.SchemeECDSAP256SHA256},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := c.s.Open(c.sealed, c.id, c.scheme); !errors.Is(err, ErrWrongKeySecret) {
				t.Fatalf("Open = %v, want ErrWrongKeySecret", err)
			}
		})
	}
}

func TestParseKeySecret(t *testing.T) {
	secret := bytes.Repeat([]byte{0xfb}, KeySecretSize)
	for _, c := range []struct {
		name, in string
		ok       bool
	}{
		{"hex", "fbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfbfb", true},
		{"base64", "+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/s=\n", true},
		{"base64 unpadded", "+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/s", true},
		{"base64url", "-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_s=", true},
		{"short", "fbfb", false},
		{"empty", "", false},
		{"not encoded", "correct horse battery staple, 32", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseKeySecret(c.in)
			if c.ok != (err == nil) || (c.ok && !bytes.Equal(got, secret)) {
				t.Fatalf("ParseKeySecret = %x, %v; want ok %t", got, err, c.ok)
			}
			if err != nil && len(c.in) > 4 && bytes.Contains([]byte(err.Error()), []byte(c.in)) {
				t.Fatalf("error quotes the secret: %v", err)
			}
		})
	}
}

// TestKeyRingStoreReopen has a ring in store mode reopened with the right
// secret (the same keys), with a wrong one (a clear error, no new key), and
// with none (file mode: the sealed keys stay).
func TestKeyRingStoreReopen(t *testing.T) {
	dir := t.TempDir()
	st := openSQLite(t, dir)
	r, err := storeRing(t, st, sealer(t, 1), KeyRingOptions{}, t0)
	must(t, err)
	want := r.Published(t0)
	rows, err := st.ListSigningKeys(t.Context())
	must(t, err)
	if len(rows) != 1 || len(rows[0].Sealed) == 0 {
		t.Fatalf("store holds %d keys (first sealed: %t), want one sealed key", len(rows), len(rows) > 0 && len(rows[0].Sealed) > 0)
	}

	t.Run("right secret", func(t *testing.T) {
		r2, err := storeRing(t, st, sealer(t, 1), KeyRingOptions{}, t0.Add(time.Hour))
		must(t, err)
		sameKeys(t, "reopened", r2.Published(t0), want)
	})
	t.Run("wrong secret", func(t *testing.T) {
		_, err := storeRing(t, st, sealer(t, 2), KeyRingOptions{}, t0.Add(time.Hour))
		if !errors.Is(err, ErrWrongKeySecret) {
			t.Fatalf("OpenKeyRing with a wrong secret = %v, want ErrWrongKeySecret", err)
		}
		rows, err := st.ListSigningKeys(t.Context())
		must(t, err)
		if len(rows) != 1 {
			t.Fatalf("store holds %d keys after a wrong secret, want the one", len(rows))
		}
	})
	t.Run("file mode reconcile keeps sealed keys", func(t *testing.T) {
		_, err := OpenKeyRing(t.Context(), filepath.Join(dir, "keys"), KeyRingOptions{Metadata: st}, t0.Add(time.Hour))
		must(t, err)
		rows, err := st.ListSigningKeys(t.Context())
		must(t, err)
		if len(rows) != 2 || !bytes.Equal(rows[0].KeyID, want[0].KeyID) {
			t.Fatalf("store holds %d keys after a file-mode open, want the sealed key and the file key", len(rows))
		}
	})
}

// TestKeyRingStoreRace has gateways (rings with their own lease holder ids
// on one store) open at once on an empty store and later find a rotation
// due at once: each time exactly one key is created, and every ring ends up
// with the same keys.
func TestKeyRingStoreRace(t *testing.T) {
	const gateways = 4
	st := openSQLite(t, t.TempDir())
	opts := KeyRingOptions{RotateEvery: 10 * 24 * time.Hour, Overlap: 2 * 24 * time.Hour}
	rings := make([]*KeyRing, gateways)
	var wg sync.WaitGroup
	for i := range rings {
		wg.Go(func() {
			r, err := storeRing(t, st, sealer(t, 1), opts, t0)
			if err != nil {
				t.Errorf("OpenKeyRing %d: %v", i, err)
			}
			rings[i] = r
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	wantRows := func(n int) {
		t.Helper()
		rows, err := st.ListSigningKeys(t.Context())
		must(t, err)
		if len(rows) != n {
			t.Fatalf("store holds %d keys, want %d", len(rows), n)
		}
	}
	wantRows(1)
	for i := range rings {
		sameKeys(t, "after opening", rings[i].Published(t0), rings[0].Published(t0))
	}

	due := rings[0].NextRotation()
	created := make([]bool, gateways)
	for i, r := range rings {
		wg.Go(func() {
			c, err := r.Rotate(t.Context(), due)
			if err != nil {
				t.Errorf("Rotate %d: %v", i, err)
			}
			created[i] = c
		})
	}
	wg.Wait()
	n := 0
	for _, c := range created {
		if c {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d rings created a successor, want exactly one", n)
	}
	wantRows(2)
	// The others load it at their next Rotate (the service's reload),
	// and all sign with the old key until the successor's not_before.
	old, err := rings[0].Current(due)
	must(t, err)
	takeover := due.Add(SuccessorLead)
	for i, r := range rings {
		if _, err := r.Rotate(t.Context(), due.Add(time.Second)); err != nil {
			t.Fatalf("Rotate %d: %v", i, err)
		}
		sameKeys(t, "after rotation", r.Published(due), rings[0].Published(due))
		for _, at := range []time.Time{due, takeover.Add(-time.Second)} {
			if cur, err := r.Current(at); err != nil || !bytes.Equal(cur.ID, old.ID) {
				t.Fatalf("ring %d signs with %v (%v) at %v, want the old key %x until the successor's not_before", i, cur, err, at, old.ID)
			}
		}
		cur, err := r.Current(takeover)
		must(t, err)
		if first, _ := rings[0].Current(takeover); !bytes.Equal(cur.ID, first.ID) || bytes.Equal(cur.ID, old.ID) {
			t.Fatalf("ring %d signs with %x, ring 0 with %x at the successor's not_before", i, cur.ID, first.ID)
		}
	}
	wantRows(2)
}

// TestKeyRingStoreWaitsForLeaseHolder has a ring open on an empty store
// while another gateway holds the rotation lease: it waits, and loads the
// key that gateway creates instead of making its own.
func TestKeyRingStoreWaitsForLeaseHolder(t *testing.T) {
	st := openSQLite(t, t.TempDir())
	ok, err := st.AcquireLease(t.Context(), store.LeaseKeyRotation, "other", t0, time.Minute)
	if err != nil || !ok {
		t.Fatalf("AcquireLease: %t, %v", ok, err)
	}
	k, err := GenerateKey(moh.SchemeEd25519, t0, t0.Add(30*24*time.Hour))
	must(t, err)
	sealed, err := sealer(t, 1).Seal(k)
	must(t, err)
	go func() {
		time.Sleep(300 * time.Millisecond)
		st.InsertSigningKey(context.Background(), store.SigningKey{KeyID: k.ID, Scheme: uint16(k.Scheme),
			PublicKey: k.public, NotBefore: k.NotBefore, NotAfter: k.NotAfter, File: keyFileName(k), Sealed: sealed})
	}()
	r, err := storeRing(t, st, sealer(t, 1), KeyRingOptions{}, t0)
	must(t, err)
	cur, err := r.Current(t0)
	must(t, err)
	if !bytes.Equal(cur.ID, k.ID) {
		t.Fatalf("ring signs with %x, want the lease holder's %x", cur.ID, k.ID)
	}
}
