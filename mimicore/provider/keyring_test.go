package provider

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

func TestKeyRingSetOptions(t *testing.T) {
	const day = 24 * time.Hour
	base := KeyRingOptions{Scheme: moh.SchemeEd25519, RotateEvery: 10 * day, Overlap: 2 * day}
	tests := []struct {
		name     string
		opts     KeyRingOptions
		rotateAt time.Duration // after t0, when Rotate next has work
		// scheme of the signing key after Rotate at t0+1h; 0: the first key
		// still signs
		newScheme moh.SignatureScheme
	}{
		{"same options", base, 10 * day, 0},
		{"defaults", KeyRingOptions{}, 0, 0}, // 30 d rotation, but the key expires after 12 d: NotAfter - 48 h
		{"new scheme", KeyRingOptions{Scheme: moh.SchemeECDSAP256SHA256, RotateEvery: 10 * day, Overlap: 2 * day}, 0, moh.SchemeECDSAP256SHA256},
		{"shorter rotation", KeyRingOptions{RotateEvery: 3 * day, Overlap: 2 * day}, 3 * day, 0},
		{"longer rotation", KeyRingOptions{RotateEvery: 20 * day, Overlap: 2 * day}, 10 * day, 0},
		{"longer overlap", KeyRingOptions{RotateEvery: 10 * day, Overlap: 5 * day}, 7 * day, 0},
		{"overlap beyond the key's life", KeyRingOptions{RotateEvery: 10 * day, Overlap: 13 * day}, -day, moh.SchemeEd25519},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := OpenKeyRing(t.Context(), t.TempDir(), base, t0)
			if err != nil {
				t.Fatal(err)
			}
			first, _ := r.Current(t0)
			if err := r.SetOptions(tt.opts); err != nil {
				t.Fatal(err)
			}
			if tt.name == "defaults" {
				// The 30-day interval would outlive the 12-day key, so it
				// is succeeded 48 h before it expires.
				tt.rotateAt = first.NotAfter.Add(-DefaultOverlap).Sub(t0)
			}
			if got, want := r.NextRotation(), t0.Add(tt.rotateAt); !got.Equal(want) {
				t.Fatalf("NextRotation = %v, want %v", got, want)
			}
			now := t0.Add(time.Hour)
			created, err := r.Rotate(t.Context(), now)
			if err != nil {
				t.Fatal(err)
			}
			if created != (tt.newScheme != 0) {
				t.Fatalf("Rotate created = %v, want %v", created, tt.newScheme != 0)
			}
			cur, _ := r.Current(now)
			if tt.newScheme == 0 {
				if !bytes.Equal(cur.ID, first.ID) {
					t.Fatal("the first key no longer signs")
				}
				return
			}
			if cur.Scheme != tt.newScheme || bytes.Equal(cur.ID, first.ID) {
				t.Fatalf("signing key scheme %v, want a new key of %v", cur.Scheme, tt.newScheme)
			}
			o := r.Options()
			if want := cur.NotBefore.Add(o.RotateEvery + o.Overlap); !cur.NotAfter.Equal(want) {
				t.Fatalf("new key expires %v, want %v", cur.NotAfter, want)
			}
			// The previous key stays published until it expires.
			pub := r.Published(now)
			if len(pub) != 2 || !bytes.Equal(pub[1].KeyID, first.ID) {
				t.Fatalf("published %d keys, want the new and the previous one", len(pub))
			}
			if pub := r.Published(first.NotAfter.Add(time.Second)); len(pub) != 1 {
				t.Fatalf("published %d keys after the previous one expired, want 1", len(pub))
			}
			// The new key is not immediately rotated again.
			if next := r.NextRotation(); !next.After(now) {
				t.Fatalf("NextRotation = %v, not after %v", next, now)
			}
		})
	}
}

func TestKeyRingSetOptionsRefusesInvalid(t *testing.T) {
	const day = 24 * time.Hour
	r, err := OpenKeyRing(t.Context(), t.TempDir(), KeyRingOptions{}, t0)
	if err != nil {
		t.Fatal(err)
	}
	before := r.Options()
	for name, opts := range map[string]KeyRingOptions{
		"lifetime above 90 days": {RotateEvery: 89 * day, Overlap: 2 * day},
		"negative rotation":      {RotateEvery: -time.Hour},
		"negative overlap":       {Overlap: -time.Hour},
		"unknown scheme":         {Scheme: 0xfefe},
	} {
		t.Run(name, func(t *testing.T) {
			if err := r.SetOptions(opts); err == nil {
				t.Fatal("accepted")
			}
			if got := r.Options(); got != before {
				t.Fatalf("options changed to %+v", got)
			}
		})
	}
}

// TestKeyRingSetOptionsConcurrent runs SetOptions against signing and
// rotation, for the race detector.
func TestKeyRingSetOptionsConcurrent(t *testing.T) {
	r, err := OpenKeyRing(t.Context(), t.TempDir(), KeyRingOptions{}, t0)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 20 {
				now := t0.Add(time.Duration(j) * time.Minute)
				switch i {
				case 0:
					scheme := moh.SchemeEd25519
					if j%2 == 1 {
						scheme = moh.SchemeECDSAP256SHA256
					}
					if err := r.SetOptions(KeyRingOptions{Scheme: scheme}); err != nil {
						t.Error(err)
					}
				case 1:
					if _, err := r.Rotate(t.Context(), now); err != nil {
						t.Error(err)
					}
				case 2:
					if _, err := r.Current(now); err != nil {
						t.Error(err)
					}
				default:
					_ = r.NextRotation()
					_ = r.Published(now)
				}
			}
		})
	}
	wg.Wait()
}

func TestKeyRingRefusesExposedKeyFiles(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix permission bits")
	}
	tests := []struct {
		name    string
		expose  func(t *testing.T, dir, file string)
		wantErr []string
	}{
		{"group readable", chmod(0o640), []string{"0640", "chmod 600"}},
		{"other readable", chmod(0o604), []string{"0604", "chmod 600"}},
		{"group writable", chmod(0o620), []string{"0620", "chmod 600"}},
		{"world readable", chmod(0o644), []string{"0644", "chmod 600"}},
		{"symbolic link", func(t *testing.T, dir, file string) {
			target := filepath.Join(t.TempDir(), "elsewhere.pem")
			if err := os.Rename(filepath.Join(dir, file), target); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, filepath.Join(dir, file)); err != nil {
				t.Fatal(err)
			}
		}, []string{"not a regular file", "L"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			r, err := OpenKeyRing(t.Context(), dir, KeyRingOptions{}, t0)
			if err != nil {
				t.Fatal(err)
			}
			k, _ := r.Current(t0)
			file := keyFileName(k)
			tt.expose(t, dir, file)
			for name, open := range map[string]func() error{
				"OpenKeyRing": func() error { _, err := OpenKeyRing(t.Context(), dir, KeyRingOptions{}, t0); return err },
				"LoadKeyRing": func() error { _, err := LoadKeyRing(dir); return err },
			} {
				err := open()
				if err == nil {
					t.Fatalf("%s loaded an exposed key file", name)
				}
				for _, want := range append(tt.wantErr, filepath.Join(dir, file)) {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("%s error %q does not mention %q", name, err, want)
					}
				}
			}
		})
	}
	t.Run("0600 and 0400 load", func(t *testing.T) {
		dir := t.TempDir()
		r, err := OpenKeyRing(t.Context(), dir, KeyRingOptions{}, t0)
		if err != nil {
			t.Fatal(err)
		}
		k, _ := r.Current(t0)
		fi, err := os.Stat(filepath.Join(dir, keyFileName(k)))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("new key file mode %v, %v; want 0600", fi.Mode(), err)
		}
		chmod(0o400)(t, dir, keyFileName(k))
		if _, err := LoadKeyRing(dir); err != nil {
			t.Fatal(err)
		}
	})
}

func chmod(mode os.FileMode) func(t *testing.T, dir, file string) {
	return func(t *testing.T, dir, file string) {
		t.Helper()
		if err := os.Chmod(filepath.Join(dir, file), mode); err != nil {
			t.Fatal(fmt.Errorf("chmod %04o: %w", mode, err))
		}
	}
}

// TestKeyRingReopenAfterQuickSchemeChange checks that keys created within
// one second, which the files cannot order by NotBefore, reopen in the
// order they were created, so the newest still signs.
func TestKeyRingReopenAfterQuickSchemeChange(t *testing.T) {
	tests := []struct {
		name      string
		sameMtime bool // the file system's clock could not tell the writes apart
	}{
		{"distinct modification times", false},
		{"equal modification times", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p256 := KeyRingOptions{Scheme: moh.SchemeECDSAP256SHA256}
			r, err := OpenKeyRing(t.Context(), dir, KeyRingOptions{}, t0)
			if err != nil {
				t.Fatal(err)
			}
			first, _ := r.Current(t0)
			if err := r.SetOptions(p256); err != nil {
				t.Fatal(err)
			}
			if created, err := r.Rotate(t.Context(), t0.Add(100*time.Millisecond)); err != nil || !created {
				t.Fatalf("Rotate = %v, %v", created, err)
			}
			second, _ := r.Current(t0.Add(100 * time.Millisecond))
			mtime := time.Now().Add(-time.Hour)
			if !tt.sameMtime {
				// The second key's file was written later.
				must(t, os.Chtimes(filepath.Join(dir, keyFileName(first)), mtime, mtime))
				mtime = mtime.Add(time.Millisecond)
			}
			must(t, os.Chtimes(filepath.Join(dir, keyFileName(second)), mtime, mtime))
			if tt.sameMtime {
				must(t, os.Chtimes(filepath.Join(dir, keyFileName(first)), mtime, mtime))
			}
			now := t0.Add(200 * time.Millisecond)
			r2, err := OpenKeyRing(t.Context(), dir, p256, now)
			if err != nil {
				t.Fatal(err)
			}
			if cur, _ := r2.Current(now); !bytes.Equal(cur.ID, second.ID) {
				t.Fatalf("after reopening, key %x (scheme %v) signs, want %x", cur.ID, cur.Scheme, second.ID)
			}
			if n := len(r2.Published(now)); n != 2 {
				t.Fatalf("published %d keys, want 2", n)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestKeyRingPublishedBound checks that the published list never exceeds
// the 16 keys a peer accepts, even when scheme changes in quick succession
// leave more unexpired keys, and that the signing key is always first.
func TestKeyRingPublishedBound(t *testing.T) {
	schemes := []moh.SignatureScheme{moh.SchemeECDSAP256SHA256, moh.SchemeEd25519}
	opts := KeyRingOptions{Scheme: moh.SchemeEd25519, RotateEvery: 10 * 24 * time.Hour, Overlap: 2 * 24 * time.Hour}
	r, err := OpenKeyRing(t.Context(), t.TempDir(), opts, t0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		opts.Scheme = schemes[i%2]
		if err := r.SetOptions(opts); err != nil {
			t.Fatal(err)
		}
		now := t0.Add(time.Duration(i+1) * time.Minute)
		if _, err := r.Rotate(t.Context(), now); err != nil {
			t.Fatal(err)
		}
		cur, err := r.Current(now)
		if err != nil {
			t.Fatal(err)
		}
		pub := r.Published(now)
		if want := min(i+2, moh.MaxVerifyKeys); len(pub) != want {
			t.Fatalf("after %d scheme changes: %d keys published, want %d", i+1, len(pub), want)
		}
		if !bytes.Equal(pub[0].KeyID, cur.ID) || pub[0].Scheme != opts.Scheme {
			t.Fatalf("after %d scheme changes: the first published key is not the signing key", i+1)
		}
	}
}
