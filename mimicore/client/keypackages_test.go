package client

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// storedRefs returns the refs of the KeyPackages whose private keys the
// record in c's state directory keeps, read from disk.
func storedRefs(t *testing.T, c *Client) [][]byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(c.dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := decodeRecord(data)
	if err != nil {
		t.Fatal(err)
	}
	var refs [][]byte
	for _, k := range rec.keyPackages {
		refs = append(refs, k.ref)
	}
	return refs
}

// TestRefusedWelcomeDeletesKeyPackage: a Welcome for bob's single-use
// KeyPackage that he refuses for good (welcome_info refused with 404 or
// 401 bad_signature, a Welcome that does not decrypt, a tree that does not
// fit it) is skipped, and the KeyPackage's private keys are deleted, on
// disk, before the cursor moves past it: the KeyPackage was claimed and
// the Welcome is never processed again (before, the keys stayed until the
// binding expired, up to 90 days).
func TestRefusedWelcomeDeletesKeyPackage(t *testing.T) {
	_, _, otherTree := welcomeQueued(t)
	for _, tc := range []struct {
		name string
		// answer answers welcome_info; nil serves the Welcome's tree.
		answer func(w http.ResponseWriter, tree []byte)
		// corrupt, when set, damages the queued Welcome.
		corrupt bool
	}{
		{name: "welcome_info not_found", answer: func(w http.ResponseWriter, _ []byte) {
			writeDSError(w, http.StatusNotFound, moh.CodeNotFound)
		}},
		{name: "welcome_info bad_signature", answer: func(w http.ResponseWriter, _ []byte) {
			writeDSError(w, http.StatusUnauthorized, moh.CodeBadSignature)
		}},
		{name: "Welcome does not decrypt", corrupt: true},
		{name: "tree of another group", answer: func(w http.ResponseWriter, _ []byte) {
			writeOK(w, &moh.DSResponse{Type: moh.ResponseWelcomeInfo, RatchetTree: otherTree})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bob, q, tree := welcomeQueued(t)
			if tc.corrupt {
				msg, err := mls.DecodeMLSMessage(q.msgs[0].Message)
				if err != nil {
					t.Fatal(err)
				}
				msg.Welcome.EncryptedGroupInfo[0] ^= 1
				if q.msgs[0].Message, err = wire.Marshal(msg); err != nil {
					t.Fatal(err)
				}
			}
			mux := http.NewServeMux()
			q.register(mux)
			mux.HandleFunc("/welcome_information", func(w http.ResponseWriter, r *http.Request) {
				if tc.answer == nil {
					writeOK(w, &moh.DSResponse{Type: moh.ResponseWelcomeInfo, RatchetTree: tree})
					return
				}
				tc.answer(w, tree)
			})
			fakeGateway(t, bob, mux)
			if n := len(storedRefs(t, bob)); n != 1 {
				t.Fatalf("bob keeps the keys of %d KeyPackages; want 1", n)
			}
			evs, err := bob.Receive(t.Context(), 0)
			if err != nil || len(evs) != 1 || evs[0].Kind != EventSkipped {
				t.Fatalf("Receive: %+v, %v; want the Welcome skipped", evs, err)
			}
			if bob.rec.cursor != 1 || len(bob.Groups()) != 0 {
				t.Fatalf("cursor %d, %d groups; want 1, 0", bob.rec.cursor, len(bob.Groups()))
			}
			if refs := storedRefs(t, bob); len(refs) != 0 || len(bob.rec.keyPackages) != 0 {
				t.Fatalf("after the Welcome was refused: the keys of %d KeyPackages kept on disk, %d in memory; want none",
					len(refs), len(bob.rec.keyPackages))
			}
		})
	}
}

// TestRefusedWelcomeKeepsLastResort: a refused Welcome for the client's
// last-resort KeyPackage, which the gateway hands out again, leaves its
// keys in place.
func TestRefusedWelcomeKeepsLastResort(t *testing.T) {
	bob, q, _ := welcomeQueued(t)
	rec := bob.rec.clone()
	rec.keyPackages = slices.Clone(rec.keyPackages)
	rec.keyPackages[0].lastResort = true
	if err := bob.saveRecord(rec); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	q.register(mux)
	mux.HandleFunc("/welcome_information", func(w http.ResponseWriter, r *http.Request) {
		writeDSError(w, http.StatusNotFound, moh.CodeNotFound)
	})
	fakeGateway(t, bob, mux)
	evs, err := bob.Receive(t.Context(), 0)
	if err != nil || len(evs) != 1 || evs[0].Kind != EventSkipped {
		t.Fatalf("Receive: %+v, %v; want the Welcome skipped", evs, err)
	}
	if refs := storedRefs(t, bob); len(refs) != 1 || !bytes.Equal(refs[0], rec.keyPackages[0].ref) {
		t.Fatalf("the last-resort KeyPackage's keys: %d kept; want kept", len(refs))
	}
}
