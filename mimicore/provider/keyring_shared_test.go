package provider

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/pgstore"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// openPostgres opens a store on the PostgreSQL database dsn and closes it
// when t ends.
func openPostgres(t *testing.T, dsn string) store.Store {
	t.Helper()
	s, err := pgstore.Open(t.Context(), dsn, pgstore.Options{MaxConns: 2})
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// verifyAgainst checks sig, made at at, the way a peer does with the key
// set published: the key with sig's key id must be listed and cover at.
func verifyAgainst(published []moh.VerificationKey, keyID []byte, at time.Time, content, sig []byte) error {
	for i := range published {
		if !bytes.Equal(published[i].KeyID, keyID) {
			continue
		}
		k, err := checkCovers(published[i], at)
		if err != nil {
			return err
		}
		return VerifyWithLabel(k, "test", content, sig)
	}
	return fmt.Errorf("key %x is not published", keyID)
}

// sharedStores are the stores two gateways share in the store-mode tests:
// one SQLite store (two rings on one handle), or two stores on one
// PostgreSQL database.
var sharedStores = []struct {
	name string
	open func(t *testing.T) (store.Store, store.Store)
}{
	{"sqlite", func(t *testing.T) (store.Store, store.Store) {
		st := openSQLite(t, t.TempDir())
		return st, st
	}},
	{"postgres", func(t *testing.T) (store.Store, store.Store) {
		dsn := pgtest.NewDB(t)
		return openPostgres(t, dsn), openPostgres(t, dsn)
	}},
}

// TestKeyRingSuccessorPublishedFirst has two gateways (rings with their own
// store handles) share one store, PostgreSQL or SQLite. Gateway a rotates;
// gateway b reloads every StoreReloadEvery, the last time just before the
// rotation, so it learns of the successor as late as it can. On a fake
// clock, second by second, each gateway signs and each signature is checked
// against both gateways' published sets: every one verifies, and b
// publishes the successor before any signature made with it exists.
func TestKeyRingSuccessorPublishedFirst(t *testing.T) {
	for _, c := range sharedStores {
		t.Run(c.name, func(t *testing.T) {
			stA, stB := c.open(t)
			opts := KeyRingOptions{RotateEvery: 10 * 24 * time.Hour, Overlap: 2 * 24 * time.Hour}
			a, err := storeRing(t, stA, sealer(t, 1), opts, t0)
			must(t, err)
			b, err := storeRing(t, stB, sealer(t, 1), opts, t0)
			must(t, err)
			first, err := a.Current(t0)
			must(t, err)

			due := a.NextRotation()
			bReload := due.Add(-time.Second)
			if _, err := b.Rotate(t.Context(), bReload); err != nil {
				t.Fatalf("b reloading: %v", err)
			}
			created, err := a.Rotate(t.Context(), due)
			must(t, err)
			if !created {
				t.Fatalf("a created no successor at %v", due)
			}
			pub := a.Published(due)
			if len(pub) != 2 || bytes.Equal(pub[0].KeyID, first.ID) {
				t.Fatalf("a publishes %d keys after rotating, want the successor first and the signing key", len(pub))
			}
			succ := pub[0]
			if got, want := int64(succ.NotBefore), due.Add(SuccessorLead).Unix(); got != want {
				t.Fatalf("successor not_before %d, want %d (SuccessorLead after the rotation)", got, want)
			}

			var bPublished, firstSigned time.Time
			content := []byte("content")
			for at := due; !at.After(due.Add(SuccessorLead + 5*time.Second)); at = at.Add(time.Second) {
				if !at.Before(bReload.Add(StoreReloadEvery)) {
					if _, err := b.Rotate(t.Context(), at); err != nil {
						t.Fatalf("b reloading at %v: %v", at, err)
					}
					bReload = at
				}
				pa, pb := a.Published(at), b.Published(at)
				if bPublished.IsZero() && len(pb) > 0 && bytes.Equal(pb[0].KeyID, succ.KeyID) {
					bPublished = at
				}
				for name, g := range map[string]*KeyRing{"a": a, "b": b} {
					cur, err := g.Current(at)
					if err != nil {
						t.Fatalf("%s signs with no key at %v: %v", name, at, err)
					}
					if firstSigned.IsZero() && bytes.Equal(cur.ID, succ.KeyID) {
						firstSigned = at
					}
					sig, err := cur.SignWithLabel("test", content)
					must(t, err)
					for vname, set := range map[string][]moh.VerificationKey{"a": pa, "b": pb} {
						if err := verifyAgainst(set, cur.ID, at, content, sig); err != nil {
							t.Fatalf("%s's signature at +%s does not verify against %s's keys: %v", name, at.Sub(due), vname, err)
						}
					}
				}
			}
			switch {
			case bPublished.IsZero():
				t.Fatalf("b never published the successor")
			case firstSigned.IsZero():
				t.Fatalf("no gateway signed with the successor by its not_before")
			case !bPublished.Before(firstSigned):
				t.Fatalf("b published the successor at +%s, a signature with it exists from +%s", bPublished.Sub(due), firstSigned.Sub(due))
			}
			rows, err := stA.ListSigningKeys(t.Context())
			must(t, err)
			if len(rows) != 2 || !rows[0].RetiredAt.Equal(time.Unix(int64(succ.NotBefore), 0)) {
				t.Fatalf("store holds %d keys, want 2 with the first retired as of the successor's not_before", len(rows))
			}
		})
	}
}

// TestSuccessorLeadOutlastsPeerMiss has gateway a rotate while gateway b,
// the one a peer's fetches reach, learns of the successor as late as it
// may: its last reload was just before the rotation and the next one
// fails. Just before b's reload after that, a forged request makes the
// peer (a real KeyFetcher, with the default MinInterval and on a fake
// clock, fetching from b over TLS on loopback) look the successor's id up,
// and the fetch takes its whole timeout; the peer remembers the id
// missing. At the successor's not_before, when a signs with it, the peer
// must accept it.
func TestSuccessorLeadOutlastsPeerMiss(t *testing.T) {
	st := openSQLite(t, t.TempDir())
	opts := KeyRingOptions{RotateEvery: 10 * 24 * time.Hour, Overlap: 2 * 24 * time.Hour}
	a, err := storeRing(t, st, sealer(t, 1), opts, t0)
	must(t, err)
	b, err := storeRing(t, st, sealer(t, 1), opts, t0)
	must(t, err)

	var clock atomic.Int64 // the peer's and gateway b's time, in ns
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	var slowFetch atomic.Bool
	srv := keysPeer(t, func(w http.ResponseWriter, r *http.Request) {
		raw, err := wire.Marshal(&moh.DSResponse{Type: moh.ResponseVerificationKeys, VerificationKeys: b.Published(now())})
		if err != nil {
			t.Error(err)
		}
		if slowFetch.CompareAndSwap(true, false) {
			// The fetch ends as late as the peer's timeout lets it.
			clock.Add(int64(defaultFetchLimit))
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(raw)
	})
	const gw = "gw.example.com"
	f, _ := fetcherFor(t, srv, gw)
	f.now = now
	lookup := func(id []byte) error {
		_, err := f.VerificationKey(t.Context(), gw, id, now())
		return err
	}

	due := a.NextRotation()
	if _, err := b.Rotate(t.Context(), due.Add(-time.Second)); err != nil {
		t.Fatalf("b reloading: %v", err)
	}
	clock.Store(due.UnixNano())
	first, err := a.Current(due)
	must(t, err)
	if err := lookup(first.ID); err != nil {
		t.Fatalf("the peer fetching the signing key: %v", err)
	}
	if created, err := a.Rotate(t.Context(), due); err != nil || !created {
		t.Fatalf("a rotating at %v: created %v, %v", due, created, err)
	}
	succ := a.Published(due)[0]
	// b's reload at +StoreReloadEvery fails; the next one succeeds.
	bReload := due.Add(maxPublishLag - time.Second)

	clock.Store(bReload.Add(-time.Second).UnixNano())
	slowFetch.Store(true)
	if err := lookup(succ.KeyID); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("the successor's id looked up before b publishes it: %v, want ErrUnknownKey", err)
	}
	if _, err := b.Rotate(t.Context(), bReload); err != nil {
		t.Fatalf("b reloading: %v", err)
	}

	signsFrom := time.Unix(int64(succ.NotBefore), 0)
	clock.Store(signsFrom.UnixNano())
	cur, err := a.Current(signsFrom)
	must(t, err)
	if !bytes.Equal(cur.ID, succ.KeyID) {
		t.Fatalf("a does not sign with the successor at its not_before")
	}
	if err := lookup(cur.ID); err != nil {
		t.Fatalf("the peer refuses the successor at its not_before, +%s after the rotation: %v", signsFrom.Sub(due), err)
	}
}

// TestSuccessorStart checks when a key created in store mode starts to
// sign.
func TestSuccessorStart(t *testing.T) {
	key := func(from, to time.Time) *PrivateKey { return &PrivateKey{NotBefore: from, NotAfter: to} }
	day := 24 * time.Hour
	for _, c := range []struct {
		name string
		keys []*PrivateKey
		want time.Time
	}{
		{"first key", nil, t0},
		{"all expired", []*PrivateKey{key(t0.Add(-2*day), t0.Add(-day))}, t0},
		{"signing key lasts", []*PrivateKey{key(t0.Add(-day), t0.Add(day))}, t0.Add(SuccessorLead)},
		{"signing key expires within the lead", []*PrivateKey{key(t0.Add(-day), t0.Add(SuccessorLead/2))}, t0},
		{"pending key of another scheme", []*PrivateKey{key(t0.Add(-day), t0.Add(day)), key(t0.Add(time.Second), t0.Add(day))}, t0.Add(SuccessorLead)},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := successorStart(c.keys, t0); !got.Equal(c.want) {
				t.Fatalf("successorStart = %v, want %v", got, c.want)
			}
		})
	}
}

// TestLoadSharedKeyRing checks the read-only view of keys sealed in a
// store: it signs with the gateways' key, reloads their successor without
// creating one, and refuses a wrong secret or a store without sealed keys
// with an error, never an empty ring; LoadKeyRing on a gateway's empty key
// directory points to it.
func TestLoadSharedKeyRing(t *testing.T) {
	st := openSQLite(t, t.TempDir())
	opts := KeyRingOptions{RotateEvery: 10 * 24 * time.Hour, Overlap: 2 * 24 * time.Hour}
	now := time.Now()
	gw, err := storeRing(t, st, sealer(t, 1), opts, now)
	must(t, err)
	cur, err := gw.Current(now)
	must(t, err)

	t.Run("right secret", func(t *testing.T) {
		view, err := LoadSharedKeyRing(t.Context(), st, sealer(t, 1))
		must(t, err)
		got, err := view.Current(now)
		must(t, err)
		if !bytes.Equal(got.ID, cur.ID) {
			t.Fatalf("the view signs with %x, the gateway with %x", got.ID, cur.ID)
		}
		due := gw.NextRotation()
		if _, err := gw.Rotate(t.Context(), due); err != nil {
			t.Fatal(err)
		}
		created, err := view.Rotate(t.Context(), due)
		must(t, err)
		if created {
			t.Fatalf("the read-only view created a key")
		}
		sameKeys(t, "view after the gateway's rotation", view.Published(due), gw.Published(due))
		rows, err := st.ListSigningKeys(t.Context())
		must(t, err)
		if len(rows) != 2 {
			t.Fatalf("store holds %d keys, want the gateway's 2", len(rows))
		}
	})
	for _, c := range []struct {
		name string
		load func(t *testing.T) error
		want string
	}{
		{"wrong secret", func(t *testing.T) error {
			_, err := LoadSharedKeyRing(t.Context(), st, sealer(t, 2))
			if !errors.Is(err, ErrWrongKeySecret) {
				return fmt.Errorf("error %v is not ErrWrongKeySecret", err)
			}
			return err
		}, "secret"},
		{"store without sealed keys", func(t *testing.T) error {
			_, err := LoadSharedKeyRing(t.Context(), openSQLite(t, t.TempDir()), sealer(t, 1))
			return err
		}, "no sealed signing key"},
		{"no sealer", func(t *testing.T) error {
			_, err := LoadSharedKeyRing(t.Context(), st, nil)
			return err
		}, "required"},
		{"empty key directory", func(t *testing.T) error {
			_, err := LoadKeyRing(t.TempDir())
			return err
		}, "LoadSharedKeyRing"},
		{"missing key directory", func(t *testing.T) error {
			_, err := LoadKeyRing(filepath.Join(t.TempDir(), "keys"))
			return err
		}, "LoadSharedKeyRing"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.load(t)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one mentioning %q", err, c.want)
			}
		})
	}
}

// TestKeyRingPublishedBoundShared is TestKeyRingPublishedBound in store
// mode, where each scheme change makes a successor that signs only
// SuccessorLead later. 20 changes within two seconds leave the ring with
// the signing key and 20 successors made while another waited, more than
// the 16 keys a peer accepts. Each successor replaces the one that waited
// (which so never signs), so at any time the key that signs is the first
// key, until the newest successor's NotBefore, then the newest, on the
// ring that made them and on another gateway's alike; and the
// published list stays within the bound and always holds the key that
// signs (the gateway's own binding checks and every peer verify with it;
// it used to be left out, as the oldest key, for a whole SuccessorLead)
// and the newest successor.
func TestKeyRingPublishedBoundShared(t *testing.T) {
	for _, c := range sharedStores {
		t.Run(c.name, func(t *testing.T) {
			stA, stB := c.open(t)
			schemes := []moh.SignatureScheme{moh.SchemeECDSAP256SHA256, moh.SchemeEd25519}
			opts := KeyRingOptions{Scheme: moh.SchemeEd25519, RotateEvery: 10 * 24 * time.Hour, Overlap: 2 * 24 * time.Hour}
			r, err := storeRing(t, stA, sealer(t, 1), opts, t0)
			must(t, err)
			first, err := r.Current(t0)
			must(t, err)
			published := func(ring *KeyRing, at time.Time, id []byte) bool {
				for _, k := range ring.Published(at) {
					if bytes.Equal(k.KeyID, id) {
						return true
					}
				}
				return false
			}
			var newest []byte
			for i := 0; i < 20; i++ {
				opts.Scheme = schemes[i%2]
				must(t, r.SetOptions(opts))
				now := t0.Add(time.Duration(i+1) * 100 * time.Millisecond)
				created, err := r.Rotate(t.Context(), now)
				if err != nil || !created {
					t.Fatalf("scheme change %d: Rotate = %v, %v", i+1, created, err)
				}
				pub := r.Published(now)
				if len(pub) > moh.MaxVerifyKeys {
					t.Fatalf("after %d scheme changes: %d keys published, more than %d", i+1, len(pub), moh.MaxVerifyKeys)
				}
				if newest = pub[0].KeyID; pub[0].Scheme != opts.Scheme {
					t.Fatalf("after %d scheme changes: the first published key is not the new one", i+1)
				}
				if cur, err := r.Current(now); err != nil || !bytes.Equal(cur.ID, first.ID) || !published(r, now, cur.ID) {
					t.Fatalf("after %d scheme changes: the first key does not sign, or is not published (%v)", i+1, err)
				}
			}
			// Another gateway, which loads the keys after the changes.
			other, err := storeRing(t, stB, sealer(t, 1), opts, t0.Add(2*time.Second))
			must(t, err)
			end := t0.Add(SuccessorLead + 3*time.Second)
			for at := t0.Add(2 * time.Second); at.Before(end); at = at.Add(100 * time.Millisecond) {
				for name, ring := range map[string]*KeyRing{"the ring": r, "another gateway": other} {
					cur, err := ring.Current(at)
					must(t, err)
					want := first.ID
					if !at.Before(t0.Add(2*time.Second + SuccessorLead)) {
						want = newest
					}
					if !bytes.Equal(cur.ID, want) || !published(ring, at, cur.ID) || !published(ring, at, newest) {
						t.Fatalf("at %v %s signs with %x (want %x), published: %v, the newest published: %v",
							at.Sub(t0), name, cur.ID, want, published(ring, at, cur.ID), published(ring, at, newest))
					}
				}
			}
		})
	}
}

// TestKeyRingSchemeDisagreement has two gateways on one store run
// different key schemes, as during a rolling key_scheme change or with a
// gateway forgotten on the old scheme, and reload alternately every 15 s
// for 10 minutes. The gateway configured last (b, on the new scheme)
// makes its key, the other leaves that key alone, and it signs on both:
// two keys in all. (Each reload used to replace the waiting key with one
// of its own scheme: 40 keys, none of which ever signed.) At the regular
// rotation the gateway that rotates makes the successor, which the other
// leaves alone too. A scheme change then takes effect at once, and so
// does a restart on another scheme (a single gateway changing its scheme
// back across restarts).
func TestKeyRingSchemeDisagreement(t *testing.T) {
	for _, c := range sharedStores {
		t.Run(c.name, func(t *testing.T) {
			stA, stB := c.open(t)
			optsA := KeyRingOptions{Scheme: moh.SchemeEd25519, RotateEvery: 10 * 24 * time.Hour, Overlap: 2 * 24 * time.Hour}
			optsB := optsA
			optsB.Scheme = moh.SchemeECDSAP256SHA256
			a, err := storeRing(t, stA, sealer(t, 1), optsA, t0)
			must(t, err)
			b, err := storeRing(t, stB, sealer(t, 1), optsB, t0.Add(time.Second))
			must(t, err)
			count := func(want int, when string) {
				t.Helper()
				rows, err := stA.ListSigningKeys(t.Context())
				must(t, err)
				if len(rows) != want {
					t.Fatalf("%s the store holds %d keys, want %d", when, len(rows), want)
				}
			}
			count(2, "after b started on the new scheme")
			reloads := func(from time.Time, when string) time.Time {
				t.Helper()
				var at time.Time
				for i := range 40 {
					at = from.Add(time.Duration(i+1) * 15 * time.Second)
					ring, name := a, "a"
					if i%2 == 1 {
						ring, name = b, "b"
					}
					if created, err := ring.Rotate(t.Context(), at); err != nil || created {
						t.Fatalf("%s: reload %d of %s at +%s: Rotate = %v, %v, want no new key", when, i+1, name, at.Sub(t0), created, err)
					}
				}
				return at
			}
			signs := func(at time.Time, scheme moh.SignatureScheme, when string) []byte {
				t.Helper()
				ca, err := a.Current(at)
				must(t, err)
				cb, err := b.Current(at)
				must(t, err)
				if !bytes.Equal(ca.ID, cb.ID) || ca.Scheme != scheme {
					t.Fatalf("%s: a signs with %x (scheme %v), b with %x; want one key of scheme %v", when, ca.ID, ca.Scheme, cb.ID, scheme)
				}
				return ca.ID
			}
			at := reloads(t0.Add(time.Second), "on two schemes")
			count(2, "after 10 minutes of reloads on two schemes")
			newKey := signs(at, moh.SchemeECDSAP256SHA256, "after the reloads")

			// At the regular rotation a, still on the old scheme, makes
			// the successor; b leaves it, and the reloads make no key.
			rotation := b.NextRotation()
			if created, err := a.Rotate(t.Context(), rotation); err != nil || !created {
				t.Fatalf("a at the rotation: Rotate = %v, %v, want a new key", created, err)
			}
			at = reloads(rotation, "after the rotation")
			count(3, "after the rotation")
			if id := signs(at, moh.SchemeEd25519, "after the rotation"); bytes.Equal(id, newKey) {
				t.Fatal("the key of before the rotation still signs")
			}

			// The change reaches a: a key of the new scheme at once,
			// which b, on that scheme, keeps.
			optsA.Scheme = moh.SchemeECDSAP256SHA256
			must(t, a.SetOptions(optsA))
			at = at.Add(15 * time.Second)
			if created, err := a.Rotate(t.Context(), at); err != nil || !created {
				t.Fatalf("a changed to the new scheme: Rotate = %v, %v, want a new key", created, err)
			}
			at = reloads(at, "on one scheme")
			count(4, "after a changed its scheme")
			signs(at.Add(SuccessorLead), moh.SchemeECDSAP256SHA256, "after a changed its scheme")

			// A restart of b on the old scheme (its scheme set anew): a
			// key of that scheme at once, which a leaves alone.
			optsB.Scheme = moh.SchemeEd25519
			restarted, err := storeRing(t, stB, sealer(t, 1), optsB, at.Add(15*time.Second))
			must(t, err)
			b = restarted
			count(5, "after b restarted on the old scheme")
			reloads(at.Add(15*time.Second), "after b restarted")
			count(5, "after the reloads that followed b's restart")
		})
	}
}
