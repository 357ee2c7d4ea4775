package storetest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// attachment returns a pending attachment of size bytes in group by
// uploader, with a fresh token hash and object name, expiring in an hour.
func attachment(t *testing.T, group []byte, uploader string, size int64) store.Attachment {
	t.Helper()
	return store.Attachment{
		TokenHash:   sha256.Sum256(randBytes(t, 32)),
		GroupID:     group,
		Object:      hex.EncodeToString(randBytes(t, 16)),
		Size:        size,
		ContentHash: randBytes(t, 32),
		Uploader:    uploader,
		Created:     time.Now(),
		Expires:     time.Now().Add(future),
	}
}

// upload reserves and commits a.
func upload(t *testing.T, s store.Store, a store.Attachment, q store.AttachmentQuota) {
	t.Helper()
	noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), a, q))
	noErr(t, "CommitAttachment", s.CommitAttachment(ctx(), a.TokenHash, time.Now().Add(future), store.SignatureAnswer{}))
}

func wantUsage(t *testing.T, what string, got store.AttachmentUsage, err error, bytes, count int64) {
	t.Helper()
	noErr(t, what, err)
	if got.Bytes != bytes || got.Count != count {
		t.Fatalf("%s: %d bytes in %d, want %d in %d", what, got.Bytes, got.Count, bytes, count)
	}
}

// forget calls ForgetObject, which must succeed and report want: whether
// the call dropped the row.
func forget(t *testing.T, s store.Store, what, name string, deleted time.Time, want bool) {
	t.Helper()
	got, err := s.ForgetObject(ctx(), name, deleted)
	noErr(t, what, err)
	if got != want {
		t.Fatalf("%s: forgotten = %v, want %v", what, got, want)
	}
}

// forgetErr calls ForgetObject and returns its error; a failing call must
// not report the row forgotten.
func forgetErr(t *testing.T, s store.Store, what, name string) error {
	t.Helper()
	got, err := s.ForgetObject(ctx(), name, time.Time{})
	if err != nil && got {
		t.Fatalf("%s: forgotten with the error %v", what, err)
	}
	return err
}

func wantUnreferenced(t *testing.T, s store.Store, want ...string) {
	t.Helper()
	got, err := s.UnreferencedObjects(ctx(), "", 100)
	noErr(t, "UnreferencedObjects", err)
	if len(got) != len(want) {
		t.Fatalf("unreferenced objects %v, want %v", got, want)
	}
	set := map[string]bool{}
	for _, g := range got {
		set[g] = true
	}
	for _, w := range want {
		if !set[w] {
			t.Fatalf("unreferenced objects %v, want %v", got, want)
		}
	}
}

const (
	uploaderA = "mimi://a.example/d/uploaderA/phone"
	uploaderB = "mimi://a.example/d/uploaderB/laptop"
)

// testAttachments checks store.Attachments.
func testAttachments(t *testing.T, open func(t *testing.T) store.Store) {
	g1, g2 := []byte("attachment group 1"), []byte("attachment group 2")
	none := store.AttachmentQuota{}

	t.Run("SignatureAnswer", func(t *testing.T) { testSignatureAnswer(t, open) })

	t.Run("PendingInvisibleThenCommitted", func(t *testing.T) {
		s := open(t)
		a := attachment(t, g1, uploaderA, 100)
		noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), a, none))
		_, err := s.LookupAttachment(ctx(), g1, a.TokenHash)
		wantErr(t, "LookupAttachment of a pending record", err, store.ErrNotFound)
		wantErr(t, "ReserveAttachment of the same token", s.ReserveAttachment(ctx(), a, none), store.ErrConflict)
		noErr(t, "CommitAttachment", s.CommitAttachment(ctx(), a.TokenHash, time.Now().Add(future), store.SignatureAnswer{}))
		wantErr(t, "second CommitAttachment", s.CommitAttachment(ctx(), a.TokenHash, time.Now().Add(future), store.SignatureAnswer{}), store.ErrNotFound)
		got, err := s.LookupAttachment(ctx(), g1, a.TokenHash)
		noErr(t, "LookupAttachment", err)
		if got.Object != a.Object || got.Size != 100 || string(got.ContentHash) != string(a.ContentHash) ||
			got.Uploader != uploaderA || string(got.GroupID) != string(g1) || got.TokenHash != a.TokenHash {
			t.Fatalf("LookupAttachment = %+v, want %+v", got, a)
		}
		_, err = s.LookupAttachment(ctx(), g2, a.TokenHash)
		wantErr(t, "LookupAttachment with another group", err, store.ErrNotFound)
		_, err = s.LookupAttachment(ctx(), g1, sha256.Sum256([]byte("other")))
		wantErr(t, "LookupAttachment of an unknown token", err, store.ErrNotFound)
	})

	t.Run("UnreferencedInNameOrder", func(t *testing.T) {
		s := open(t)
		var names []string
		for range 5 {
			a := attachment(t, g1, uploaderA, 1)
			noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), a, none))
			_, err := s.ReleaseAttachment(ctx(), a.TokenHash)
			noErr(t, "ReleaseAttachment", err)
			names = append(names, a.Object)
		}
		referenced := attachment(t, g1, uploaderA, 1)
		upload(t, s, referenced, none)
		slices.Sort(names)
		var got []string
		for after := ""; ; {
			page, err := s.UnreferencedObjects(ctx(), after, 2)
			noErr(t, "UnreferencedObjects", err)
			got = append(got, page...)
			if len(page) < 2 {
				break
			}
			after = page[len(page)-1]
		}
		if !slices.Equal(got, names) {
			t.Fatalf("unreferenced objects in pages of 2: %v, want %v", got, names)
		}
		page, err := s.UnreferencedObjects(ctx(), names[2], 10)
		noErr(t, "UnreferencedObjects", err)
		if !slices.Equal(page, names[3:]) {
			t.Fatalf("unreferenced objects after %s: %v, want %v", names[2], page, names[3:])
		}
	})

	t.Run("RecordObject", func(t *testing.T) {
		s := open(t)
		gone := hex.EncodeToString(randBytes(t, 16))
		noErr(t, "RecordObject", s.RecordObject(ctx(), gone))
		noErr(t, "RecordObject again", s.RecordObject(ctx(), gone))
		wantUnreferenced(t, s, gone)
		// A row with references stays as it is.
		a := attachment(t, g1, uploaderA, 10)
		upload(t, s, a, none)
		noErr(t, "RecordObject of a referenced object", s.RecordObject(ctx(), a.Object))
		wantUnreferenced(t, s, gone)
		wantErr(t, "ForgetObject of a referenced object", forgetErr(t, s, "ForgetObject of a referenced object", a.Object), store.ErrConflict)
		_, last, err := s.DeleteAttachment(ctx(), g1, a.TokenHash, "")
		noErr(t, "DeleteAttachment", err)
		if !last {
			t.Fatal("DeleteAttachment: not the last reference")
		}
		wantUnreferenced(t, s, gone, a.Object)
		forget(t, s, "ForgetObject", gone, time.Time{}, true)
		forget(t, s, "ForgetObject", a.Object, time.Time{}, true)
		wantUnreferenced(t, s)
		wantErr(t, "RecordObject of an empty name", s.RecordObject(ctx(), ""), store.ErrInvalid)
		wantErr(t, "RecordObject of a long name", s.RecordObject(ctx(), hex.EncodeToString(randBytes(t, store.MaxObjectNameSize))), store.ErrInvalid)
	})

	t.Run("ObjectsInUse", func(t *testing.T) {
		s := open(t)
		pending := attachment(t, g1, uploaderA, 10)
		pending.Expires = time.Now().Add(time.Minute) // before the committed one's
		noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), pending, none))
		committed := attachment(t, g1, uploaderA, 10)
		upload(t, s, committed, none)
		released := attachment(t, g1, uploaderA, 10)
		noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), released, none))
		_, err := s.ReleaseAttachment(ctx(), released.TokenHash)
		noErr(t, "ReleaseAttachment", err)
		unknown := hex.EncodeToString(randBytes(t, 16))
		names := []string{pending.Object, committed.Object, released.Object, unknown}
		for range 600 { // more than one batch of a store that asks in batches
			names = append(names, hex.EncodeToString(randBytes(t, 16)))
		}
		got, err := s.ObjectsInUse(ctx(), names)
		noErr(t, "ObjectsInUse", err)
		want := map[string]bool{pending.Object: true, committed.Object: true}
		if !maps.Equal(got, want) {
			t.Fatalf("ObjectsInUse = %v, want the pending and the committed object %v", got, want)
		}
		// Past its deadline the pending record goes, and with it its use.
		n, err := s.ExpireAttachments(ctx(), pending.Expires.Add(time.Second), 10)
		noErr(t, "ExpireAttachments", err)
		if n != 1 {
			t.Fatalf("ExpireAttachments removed %d records, want the pending one", n)
		}
		got, err = s.ObjectsInUse(ctx(), names)
		noErr(t, "ObjectsInUse after the expiry", err)
		if !maps.Equal(got, map[string]bool{committed.Object: true}) {
			t.Fatalf("ObjectsInUse after the pending record expired = %v, want only the committed object", got)
		}
		got, err = s.ObjectsInUse(ctx(), nil)
		noErr(t, "ObjectsInUse of no names", err)
		if len(got) != 0 {
			t.Fatalf("ObjectsInUse of no names = %v", got)
		}
	})

	t.Run("KeepObject", func(t *testing.T) {
		// An upload's reservation expires and is swept while the
		// backend may still commit its bytes: the sweep deletes what is
		// there, and the object's row stays listed until KeepObject, so
		// that bytes landing after that delete are deleted by a later
		// sweep rather than left listed by nothing.
		s := open(t)
		a := attachment(t, g1, uploaderA, 10)
		a.Expires = time.Now().Add(time.Minute).Truncate(time.Millisecond)
		a.KeepObject = a.Expires.Add(time.Hour) // whole milliseconds, as stored
		noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), a, none))
		sweep := a.Expires.Add(time.Second)
		n, err := s.ExpireAttachments(ctx(), sweep, 10)
		noErr(t, "ExpireAttachments", err)
		if n != 1 {
			t.Fatalf("ExpireAttachments removed %d records, want the pending one", n)
		}
		wantUnreferenced(t, s, a.Object)
		forget(t, s, "ForgetObject before KeepObject", a.Object, sweep, false)
		wantUnreferenced(t, s, a.Object)
		forget(t, s, "ForgetObject just before KeepObject", a.Object, a.KeepObject.Add(-time.Millisecond), false)
		wantUnreferenced(t, s, a.Object)
		forget(t, s, "ForgetObject at KeepObject", a.Object, a.KeepObject, true)
		wantUnreferenced(t, s)

		// A zero deleted (no commit can land) forgets a kept row at once.
		b := attachment(t, g1, uploaderA, 10)
		b.Expires = sweep.Add(-2 * time.Second)
		b.KeepObject = a.KeepObject
		noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), b, none))
		if _, err := s.ExpireAttachments(ctx(), sweep, 10); err != nil {
			t.Fatal(err)
		}
		forget(t, s, "ForgetObject of a kept row, nothing to land", b.Object, time.Time{}, true)
		wantUnreferenced(t, s)

		// ReleaseAttachment and RecordObject, called once the commit of
		// the bytes ended, end the keeping; a zero KeepObject keeps the
		// row until Expires only.
		c := attachment(t, g1, uploaderA, 10)
		c.KeepObject = time.Now().Add(future + time.Hour)
		noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), c, none))
		_, err = s.ReleaseAttachment(ctx(), c.TokenHash)
		noErr(t, "ReleaseAttachment", err)
		forget(t, s, "ForgetObject after ReleaseAttachment", c.Object, time.Now(), true)
		wantUnreferenced(t, s)
		d := attachment(t, g1, uploaderA, 10)
		d.Expires = b.Expires
		noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), d, none))
		if _, err := s.ExpireAttachments(ctx(), sweep, 10); err != nil {
			t.Fatal(err)
		}
		forget(t, s, "ForgetObject after a zero KeepObject's Expires", d.Object, sweep, true)
		wantUnreferenced(t, s)
		e := attachment(t, g1, uploaderA, 10)
		e.Expires = b.Expires
		e.KeepObject = a.KeepObject
		noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), e, none))
		if _, err := s.ExpireAttachments(ctx(), sweep, 10); err != nil {
			t.Fatal(err)
		}
		forget(t, s, "ForgetObject of an expired reservation's kept row", e.Object, sweep, false)
		wantUnreferenced(t, s, e.Object)
		noErr(t, "RecordObject of the kept row", s.RecordObject(ctx(), e.Object))
		forget(t, s, "ForgetObject after RecordObject", e.Object, sweep, true)
		wantUnreferenced(t, s)

		// CommitAttachment ends the keeping too: the bytes are
		// committed, so once the record goes (deleted, or expired), a
		// sweep's ForgetObject drops the row at once.
		g := attachment(t, g1, uploaderA, 10)
		g.KeepObject = time.Now().Add(future + time.Hour)
		upload(t, s, g, none)
		_, last, err := s.DeleteAttachment(ctx(), g1, g.TokenHash, "")
		noErr(t, "DeleteAttachment of a committed upload", err)
		if !last {
			t.Fatal("DeleteAttachment: not the last reference")
		}
		forget(t, s, "ForgetObject of a deleted committed upload's object", g.Object, time.Now(), true)
		wantUnreferenced(t, s)
		h := attachment(t, g1, uploaderA, 10)
		h.KeepObject = g.KeepObject
		noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), h, none))
		retained := time.Now().Add(time.Minute)
		noErr(t, "CommitAttachment", s.CommitAttachment(ctx(), h.TokenHash, retained, store.SignatureAnswer{}))
		if n, err := s.ExpireAttachments(ctx(), retained.Add(time.Second), 10); err != nil || n != 1 {
			t.Fatalf("ExpireAttachments removed %d records, %v; want the committed one", n, err)
		}
		forget(t, s, "ForgetObject of an expired committed upload's object", h.Object, retained.Add(time.Second), true)
		wantUnreferenced(t, s)
	})

	t.Run("Release", func(t *testing.T) {
		s := open(t)
		a := attachment(t, g1, uploaderA, 10)
		noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), a, none))
		u, err := s.GroupAttachmentUsage(ctx(), g1)
		wantUsage(t, "usage while pending", u, err, 10, 1)
		obj, err := s.ReleaseAttachment(ctx(), a.TokenHash)
		noErr(t, "ReleaseAttachment", err)
		if obj != a.Object {
			t.Fatalf("released object %q, want %q", obj, a.Object)
		}
		u, err = s.GroupAttachmentUsage(ctx(), g1)
		wantUsage(t, "usage after release", u, err, 0, 0)
		wantUnreferenced(t, s, a.Object)
		forget(t, s, "ForgetObject", a.Object, time.Time{}, true)
		forget(t, s, "ForgetObject again", a.Object, time.Time{}, false)
		wantUnreferenced(t, s)
		_, err = s.ReleaseAttachment(ctx(), a.TokenHash)
		wantErr(t, "second ReleaseAttachment", err, store.ErrNotFound)
		wantErr(t, "CommitAttachment after release", s.CommitAttachment(ctx(), a.TokenHash, time.Now().Add(future), store.SignatureAnswer{}), store.ErrNotFound)

		// A committed record is not released.
		b := attachment(t, g1, uploaderA, 10)
		upload(t, s, b, none)
		_, err = s.ReleaseAttachment(ctx(), b.TokenHash)
		wantErr(t, "ReleaseAttachment of a committed record", err, store.ErrNotFound)
	})

	t.Run("PendingPastDeadlineCannotCommit", func(t *testing.T) {
		s := open(t)
		a := attachment(t, g1, uploaderA, 10)
		a.Expires = time.Now().Add(past)
		noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), a, none))
		wantErr(t, "CommitAttachment past the deadline", s.CommitAttachment(ctx(), a.TokenHash, time.Now().Add(future), store.SignatureAnswer{}), store.ErrNotFound)
	})

	t.Run("Quota", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			q     store.AttachmentQuota
			fits  []int64 // sizes that fit in turn
			extra int64   // then one that does not
			// elsewhere: extra fits in another group by another uploader
			elsewhere bool
		}{
			{"group bytes", store.AttachmentQuota{GroupBytes: 100}, []int64{60, 40}, 1, true},
			{"group count", store.AttachmentQuota{GroupCount: 2}, []int64{1, 1}, 0, true},
			{"uploader bytes", store.AttachmentQuota{UploaderBytes: 50}, []int64{50}, 1, true},
			{"uploader count", store.AttachmentQuota{UploaderCount: 1}, []int64{5}, 5, true},
			{"single object over", store.AttachmentQuota{GroupBytes: 10}, nil, 11, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				s := open(t)
				for _, size := range tc.fits {
					upload(t, s, attachment(t, g1, uploaderA, size), tc.q)
				}
				over := attachment(t, g1, uploaderA, tc.extra)
				wantErr(t, "ReserveAttachment over quota", s.ReserveAttachment(ctx(), over, tc.q), store.ErrQuota)
				wantUnreferenced(t, s)
				// Another group and another uploader have quotas of their own.
				if tc.elsewhere {
					other := attachment(t, g2, uploaderB, tc.extra)
					noErr(t, "ReserveAttachment in another group", s.ReserveAttachment(ctx(), other, tc.q))
				}
			})
		}
	})

	t.Run("QuotaRace", func(t *testing.T) {
		s := open(t)
		q := store.AttachmentQuota{GroupBytes: 1000}
		upload(t, s, attachment(t, g1, uploaderA, 400), q)
		const racers = 8
		var wg sync.WaitGroup
		errs := make([]error, racers)
		for i := range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = s.ReserveAttachment(ctx(), attachment(t, g1, uploaderB, 500), q)
			}()
		}
		wg.Wait()
		ok := 0
		for i, err := range errs {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, store.ErrQuota):
				t.Fatalf("racer %d: %v", i, err)
			}
		}
		if ok != 1 {
			t.Fatalf("%d of %d racing reservations passed a quota with room for one", ok, racers)
		}
		u, err := s.GroupAttachmentUsage(ctx(), g1)
		wantUsage(t, "usage after the race", u, err, 900, 2)
	})

	t.Run("DeleteByUploaderOrAnyone", func(t *testing.T) {
		s := open(t)
		a := attachment(t, g1, uploaderA, 10)
		upload(t, s, a, none)
		_, _, err := s.DeleteAttachment(ctx(), g2, a.TokenHash, "")
		wantErr(t, "DeleteAttachment with another group", err, store.ErrNotFound)
		_, _, err = s.DeleteAttachment(ctx(), g1, a.TokenHash, uploaderB)
		wantErr(t, "DeleteAttachment by another uploader", err, store.ErrConflict)
		if _, err := s.LookupAttachment(ctx(), g1, a.TokenHash); err != nil {
			t.Fatalf("a refused delete removed the record: %v", err)
		}
		got, last, err := s.DeleteAttachment(ctx(), g1, a.TokenHash, uploaderA)
		noErr(t, "DeleteAttachment by the uploader", err)
		if !last || got.Object != a.Object {
			t.Fatalf("DeleteAttachment = %v, %v; want the last reference of %s", got.Object, last, a.Object)
		}
		_, err = s.LookupAttachment(ctx(), g1, a.TokenHash)
		wantErr(t, "LookupAttachment after delete", err, store.ErrNotFound)
		wantUnreferenced(t, s, a.Object)

		b := attachment(t, g1, uploaderA, 10)
		upload(t, s, b, none)
		_, _, err = s.DeleteAttachment(ctx(), g1, b.TokenHash, "")
		noErr(t, "DeleteAttachment by anyone", err)
	})

	t.Run("CopySharesObject", func(t *testing.T) {
		s := open(t)
		a := attachment(t, g1, uploaderA, 300)
		upload(t, s, a, none)
		dst := attachment(t, g2, uploaderB, 0)
		q := store.AttachmentQuota{GroupBytes: 500}
		// The copy counts against the target group's quota.
		upload(t, s, attachment(t, g2, uploaderB, 250), q)
		_, err := s.CopyAttachment(ctx(), g1, a.TokenHash, dst, q, store.SignatureAnswer{})
		wantErr(t, "CopyAttachment over the target's quota", err, store.ErrQuota)
		_, err = s.CopyAttachment(ctx(), g2, a.TokenHash, dst, none, store.SignatureAnswer{})
		wantErr(t, "CopyAttachment from the wrong group", err, store.ErrNotFound)
		c, err := s.CopyAttachment(ctx(), g1, a.TokenHash, dst, store.AttachmentQuota{GroupBytes: 550}, store.SignatureAnswer{})
		noErr(t, "CopyAttachment", err)
		if c.Object != a.Object || c.Size != 300 || string(c.ContentHash) != string(a.ContentHash) || string(c.GroupID) != string(g2) {
			t.Fatalf("copy %+v does not share %+v", c, a)
		}
		got, err := s.LookupAttachment(ctx(), g2, dst.TokenHash)
		noErr(t, "LookupAttachment of the copy", err)
		if got.Object != a.Object || got.Uploader != uploaderB {
			t.Fatalf("copy read back as %+v", got)
		}
		u, err := s.GroupAttachmentUsage(ctx(), g2)
		wantUsage(t, "target usage", u, err, 550, 2)
		u, err = s.UploaderAttachmentUsage(ctx(), uploaderB)
		wantUsage(t, "copier usage", u, err, 550, 2)
		_, err = s.CopyAttachment(ctx(), g1, a.TokenHash, dst, none, store.SignatureAnswer{})
		wantErr(t, "CopyAttachment to a used token", err, store.ErrConflict)

		// Deleting the original keeps the object: the copy refers to it.
		_, last, err := s.DeleteAttachment(ctx(), g1, a.TokenHash, "")
		noErr(t, "DeleteAttachment of the original", err)
		if last {
			t.Fatal("deleting the original reported the last reference while a copy holds it")
		}
		wantUnreferenced(t, s)
		wantErr(t, "ForgetObject of a referenced object", forgetErr(t, s, "ForgetObject of a referenced object", a.Object), store.ErrConflict)
		_, last, err = s.DeleteAttachment(ctx(), g2, dst.TokenHash, "")
		noErr(t, "DeleteAttachment of the copy", err)
		if !last {
			t.Fatal("deleting the last copy did not report the last reference")
		}
		wantUnreferenced(t, s, a.Object)
	})

	t.Run("Expire", func(t *testing.T) {
		s := open(t)
		old := attachment(t, g1, uploaderA, 10)
		noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), old, none))
		noErr(t, "CommitAttachment", s.CommitAttachment(ctx(), old.TokenHash, time.Now().Add(2*time.Second), store.SignatureAnswer{}))
		stale := attachment(t, g1, uploaderA, 10) // a pending upload that never finished
		stale.Expires = time.Now().Add(10 * time.Minute)
		noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), stale, none))
		kept := attachment(t, g1, uploaderA, 10)
		upload(t, s, kept, none)
		copied, err := s.CopyAttachment(ctx(), g1, old.TokenHash, attachment(t, g2, uploaderB, 0), none, store.SignatureAnswer{})
		noErr(t, "CopyAttachment", err)

		later := time.Now().Add(30 * time.Minute)
		n, err := s.ExpireAttachments(ctx(), later, 100)
		noErr(t, "ExpireAttachments", err)
		if n != 2 { // the original and the stale pending one
			t.Fatalf("ExpireAttachments removed %d, want 2", n)
		}
		wantUnreferenced(t, s, stale.Object) // old's object is still the copy's
		if _, err := s.LookupAttachment(ctx(), g1, kept.TokenHash); err != nil {
			t.Fatal(err)
		}
		if _, err := s.LookupAttachment(ctx(), g2, copied.TokenHash); err != nil {
			t.Fatal(err)
		}
		n, err = s.ExpireAttachments(ctx(), time.Now().Add(2*future), 1)
		noErr(t, "ExpireAttachments with limit 1", err)
		if n != 1 {
			t.Fatalf("ExpireAttachments with limit 1 removed %d", n)
		}
	})

	t.Run("DeleteGroup", func(t *testing.T) { testAttachmentsDeleteGroup(t, open) })
	t.Run("ReInit", func(t *testing.T) { testAttachmentsReInit(t, open) })

	t.Run("Invalid", func(t *testing.T) {
		s := open(t)
		for name, mut := range map[string]func(*store.Attachment){
			"empty group":    func(a *store.Attachment) { a.GroupID = nil },
			"empty uploader": func(a *store.Attachment) { a.Uploader = "" },
			"empty object":   func(a *store.Attachment) { a.Object = "" },
			"negative size":  func(a *store.Attachment) { a.Size = -1 },
			"empty hash":     func(a *store.Attachment) { a.ContentHash = nil },
			"long hash":      func(a *store.Attachment) { a.ContentHash = make([]byte, 65) },
		} {
			t.Run(name, func(t *testing.T) {
				a := attachment(t, g1, uploaderA, 1)
				mut(&a)
				wantErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), a, none), store.ErrInvalid)
			})
		}
	})
}

// testSignatureAnswer checks store.SignatureAnswer: the answer of an
// upload's commit or a copy is recorded with its digest by the same write,
// only when that write succeeds, and goes with the digest's record.
func testSignatureAnswer(t *testing.T, open func(t *testing.T) store.Store) {
	g1, g2 := []byte("answer group 1"), []byte("answer group 2")
	none := store.AttachmentQuota{}
	seen := func(t *testing.T, s store.Store, exp time.Duration) store.SignatureAnswer {
		t.Helper()
		ans := store.SignatureAnswer{Digest: [32]byte(randBytes(t, 32)), Body: randBytes(t, 32)}
		first, err := s.SeenSignature(ctx(), ans.Digest, time.Now().Add(exp))
		noErr(t, "SeenSignature", err)
		if !first {
			t.Fatal("a fresh digest reported as replay")
		}
		return ans
	}
	wantAnswer := func(t *testing.T, s store.Store, ans store.SignatureAnswer) {
		t.Helper()
		got, err := s.SignatureAnswer(ctx(), ans.Digest)
		noErr(t, "SignatureAnswer", err)
		if string(got) != string(ans.Body) {
			t.Fatalf("SignatureAnswer = %x, want %x", got, ans.Body)
		}
	}
	wantNone := func(t *testing.T, s store.Store, ans store.SignatureAnswer, what string) {
		t.Helper()
		_, err := s.SignatureAnswer(ctx(), ans.Digest)
		wantErr(t, "SignatureAnswer "+what, err, store.ErrNotFound)
	}

	for _, tc := range []struct {
		name string
		// succeed runs the write that records ans and succeeds.
		succeed func(t *testing.T, s store.Store, ans store.SignatureAnswer)
		// fail runs it so that it fails, recording nothing.
		fail func(t *testing.T, s store.Store, ans store.SignatureAnswer)
	}{
		{
			name: "Commit",
			succeed: func(t *testing.T, s store.Store, ans store.SignatureAnswer) {
				a := attachment(t, g1, uploaderA, 10)
				noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), a, none))
				noErr(t, "CommitAttachment", s.CommitAttachment(ctx(), a.TokenHash, time.Now().Add(future), ans))
			},
			fail: func(t *testing.T, s store.Store, ans store.SignatureAnswer) {
				a := attachment(t, g1, uploaderA, 10)
				noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), a, none))
				_, err := s.ReleaseAttachment(ctx(), a.TokenHash)
				noErr(t, "ReleaseAttachment", err)
				wantErr(t, "CommitAttachment of a released upload",
					s.CommitAttachment(ctx(), a.TokenHash, time.Now().Add(future), ans), store.ErrNotFound)
			},
		},
		{
			name: "Copy",
			succeed: func(t *testing.T, s store.Store, ans store.SignatureAnswer) {
				a := attachment(t, g1, uploaderA, 10)
				upload(t, s, a, none)
				_, err := s.CopyAttachment(ctx(), g1, a.TokenHash, attachment(t, g2, uploaderB, 0), none, ans)
				noErr(t, "CopyAttachment", err)
			},
			fail: func(t *testing.T, s store.Store, ans store.SignatureAnswer) {
				a := attachment(t, g1, uploaderA, 10)
				upload(t, s, a, none)
				_, err := s.CopyAttachment(ctx(), g1, a.TokenHash, attachment(t, g2, uploaderB, 0),
					store.AttachmentQuota{GroupBytes: 5}, ans)
				wantErr(t, "CopyAttachment over the quota", err, store.ErrQuota)
				_, err = s.CopyAttachment(ctx(), g2, a.TokenHash, attachment(t, g2, uploaderB, 0), none, ans)
				wantErr(t, "CopyAttachment from another group", err, store.ErrNotFound)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			ans := seen(t, s, future)
			wantNone(t, s, ans, "before the write")
			tc.succeed(t, s, ans)
			wantAnswer(t, s, ans)
			// A replay of the digest keeps its answer.
			if first, err := s.SeenSignature(ctx(), ans.Digest, time.Now().Add(future)); err != nil || first {
				t.Fatalf("SeenSignature of an answered digest: first use %t, %v", first, err)
			}
			wantAnswer(t, s, ans)

			failed := seen(t, s, future)
			tc.fail(t, s, failed)
			wantNone(t, s, failed, "after a failed write")

			// Without a record of its digest, or with an expired one,
			// nothing is recorded, and a digest recorded again after
			// its expiry has no answer.
			unseen := store.SignatureAnswer{Digest: [32]byte(randBytes(t, 32)), Body: randBytes(t, 32)}
			tc.succeed(t, s, unseen)
			wantNone(t, s, unseen, "of a digest never recorded")
			expired := seen(t, s, past)
			tc.succeed(t, s, expired)
			wantNone(t, s, expired, "of an expired digest")
			if first, err := s.SeenSignature(ctx(), expired.Digest, time.Now().Add(future)); err != nil || !first {
				t.Fatalf("SeenSignature of an expired digest: first use %t, %v", first, err)
			}
			wantNone(t, s, expired, "of a digest recorded again after its expiry")

			// An answer over the size limit is refused.
			big := seen(t, s, future)
			big.Body = make([]byte, store.MaxAnswerSize+1)
			a := attachment(t, g1, uploaderA, 10)
			noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), a, none))
			wantErr(t, "CommitAttachment with an oversized answer",
				s.CommitAttachment(ctx(), a.TokenHash, time.Now().Add(future), big), store.ErrInvalid)
			_, err := s.CopyAttachment(ctx(), g1, sha256.Sum256([]byte("x")), attachment(t, g2, uploaderB, 0), none, big)
			wantErr(t, "CopyAttachment with an oversized answer", err, store.ErrInvalid)
		})
	}

}

// testAttachmentsDeleteGroup checks that deleting a group, by DeleteGroup
// or by a deleting commit, removes its attachment records in the same
// write: their quota is released and their objects are unreferenced,
// except those a copy in another group still refers to.
func testAttachmentsDeleteGroup(t *testing.T, open func(t *testing.T) store.Store) {
	none := store.AttachmentQuota{}
	for _, tc := range []struct {
		name   string
		delete func(t *testing.T, s store.Store, g *Group) error
	}{
		{"DeleteGroup", func(t *testing.T, s store.Store, g *Group) error {
			return s.DeleteGroup(ctx(), g.State.GroupID())
		}},
		{"CommitEpochWithDelete", func(t *testing.T, s store.Store, g *Group) error {
			_, del := g.Commit(t)
			del.Delete = true
			_, err := s.CommitEpoch(ctx(), del)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			g := NewGroup(t, randBytes(t, 16), 1)
			gid := g.State.GroupID()
			noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
			other := []byte("attachment group kept")

			own := attachment(t, gid, uploaderA, 100)
			upload(t, s, own, none)
			copied := attachment(t, gid, uploaderA, 200)
			upload(t, s, copied, none)
			cp, err := s.CopyAttachment(ctx(), gid, copied.TokenHash, attachment(t, other, uploaderB, 0), none, store.SignatureAnswer{})
			noErr(t, "CopyAttachment", err)
			pending := attachment(t, gid, uploaderA, 50)
			noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), pending, none))
			elsewhere := attachment(t, other, uploaderA, 10)
			upload(t, s, elsewhere, none)

			noErr(t, "deleting the group", tc.delete(t, s, g))

			_, err = s.LookupAttachment(ctx(), gid, own.TokenHash)
			wantErr(t, "LookupAttachment in the deleted group", err, store.ErrNotFound)
			wantErr(t, "CommitAttachment of an upload to the deleted group",
				s.CommitAttachment(ctx(), pending.TokenHash, time.Now().Add(future), store.SignatureAnswer{}), store.ErrNotFound)
			u, err := s.GroupAttachmentUsage(ctx(), gid)
			wantUsage(t, "deleted group's usage", u, err, 0, 0)
			u, err = s.UploaderAttachmentUsage(ctx(), uploaderA)
			wantUsage(t, "uploader's usage", u, err, 10, 1)
			u, err = s.UploaderAttachmentUsage(ctx(), uploaderB)
			wantUsage(t, "copier's usage", u, err, 200, 1)
			wantUnreferenced(t, s, own.Object, pending.Object)
			// An upload or a copy authenticated before the deletion
			// writes nothing into the deleted group.
			wantErr(t, "ReserveAttachment in the deleted group",
				s.ReserveAttachment(ctx(), attachment(t, gid, uploaderA, 5), none), store.ErrNotFound)
			_, err = s.CopyAttachment(ctx(), other, elsewhere.TokenHash, attachment(t, gid, uploaderA, 0), none, store.SignatureAnswer{})
			wantErr(t, "CopyAttachment into the deleted group", err, store.ErrNotFound)
			u, err = s.GroupAttachmentUsage(ctx(), gid)
			wantUsage(t, "deleted group's usage after the refused writes", u, err, 0, 0)
			wantUnreferenced(t, s, own.Object, pending.Object)

			got, err := s.LookupAttachment(ctx(), other, cp.TokenHash)
			noErr(t, "LookupAttachment of the copy in another group", err)
			if got.Object != copied.Object || got.Size != 200 {
				t.Fatalf("copy read back as %+v", got)
			}
			wantErr(t, "ForgetObject of the copy's object", forgetErr(t, s, "ForgetObject of the copy's object", copied.Object), store.ErrConflict)
			if _, err := s.LookupAttachment(ctx(), other, elsewhere.TokenHash); err != nil {
				t.Fatal(err)
			}
			_, last, err := s.DeleteAttachment(ctx(), other, cp.TokenHash, "")
			noErr(t, "DeleteAttachment of the copy", err)
			if !last {
				t.Fatal("deleting the copy did not report the last reference")
			}
		})
	}
}
