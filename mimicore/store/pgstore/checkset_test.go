package pgstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestCheckAndSetAcrossStores races 50 callers per key through two stores
// on one database, as two gateways behind a load balancer would be raced:
// for the replay cache's Reserve, the replay log's RecordReplay, the
// client-signature replay set and Privacy Pass's spent tokens, exactly one
// caller gets first use of each key, whichever gateway it went through.
func TestCheckAndSetAcrossStores(t *testing.T) {
	stores := twoGateways(t)
	expires := time.Now().Add(10 * time.Minute)
	const callers, keys = 50, 4
	cases := []struct {
		name  string
		first func(ctx context.Context, s store.Store, key int) (bool, error)
	}{
		{"Reserve", func(ctx context.Context, s store.Store, key int) (bool, error) {
			r, err := s.Reserve(ctx, "b.example", fmt.Appendf(nil, "request %d", key), sha256.Sum256([]byte{byte(key)}), expires)
			return r.Status == store.ReplayNew, err
		}},
		{"RecordReplay", func(ctx context.Context, s store.Store, key int) (bool, error) {
			_, err := s.RecordReplay(ctx, "c.example", fmt.Appendf(nil, "request %d", key), sha256.Sum256([]byte{byte(key)}),
				store.Answer{Body: []byte("answer")}, expires)
			if errors.Is(err, store.ErrConflict) {
				return false, nil
			}
			return err == nil, err
		}},
		{"SeenSignature", func(ctx context.Context, s store.Store, key int) (bool, error) {
			return s.SeenSignature(ctx, sha256.Sum256(fmt.Appendf(nil, "signature %d", key)), expires)
		}},
		{"MarkSpent", func(ctx context.Context, s store.Store, key int) (bool, error) {
			return s.MarkSpent(ctx, fmt.Appendf(nil, "token nonce %d", key), expires)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var mu sync.Mutex
			firsts := make([]int, keys)
			perStore := make([]int, len(stores))
			var wg sync.WaitGroup
			for key := range keys {
				for i := range callers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						first, err := c.first(context.Background(), stores[i%len(stores)], key)
						if err != nil {
							t.Errorf("key %d, caller %d: %v", key, i, err)
							return
						}
						if first {
							mu.Lock()
							firsts[key]++
							perStore[i%len(stores)]++
							mu.Unlock()
						}
					}()
				}
			}
			wg.Wait()
			for key, n := range firsts {
				if n != 1 {
					t.Errorf("key %d: %d first uses among %d callers on two stores, want 1", key, n, callers)
				}
			}
			t.Logf("first uses per store: %v", perStore)
		})
	}
}

// TestAttachmentRefsAcrossStores copies one attachment 20 times through two
// stores at once, then deletes the original and every copy at once through
// both: the object's reference count holds (exactly one delete finds the
// last reference) and the object is then listed as unreferenced, once.
func TestAttachmentRefsAcrossStores(t *testing.T) {
	ctx := context.Background()
	var stores [2]*Store
	stores[0], stores[1] = openPair(t, 8)
	now := time.Now()
	hash := func(i int) (h [32]byte) {
		h[0], h[1] = byte(i), 7
		return h
	}
	src := store.Attachment{GroupID: []byte("source group"), Object: "object-shared-by-copies", Size: 10,
		ContentHash: []byte("hash"), Uploader: "mimi://a.example/d/alice/laptop", TokenHash: hash(0),
		Created: now, Expires: now.Add(time.Hour)}
	if err := stores[0].ReserveAttachment(ctx, src, store.AttachmentQuota{}); err != nil {
		t.Fatal(err)
	}
	if err := stores[1].CommitAttachment(ctx, src.TokenHash, src.Expires, store.SignatureAnswer{}); err != nil {
		t.Fatal(err)
	}
	const copies = 20
	var wg sync.WaitGroup
	for i := 1; i <= copies; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst := store.Attachment{GroupID: []byte("target group"), Uploader: "mimi://a.example/d/alice/laptop",
				TokenHash: hash(i), Created: now, Expires: now.Add(time.Hour)}
			if _, err := stores[i%2].CopyAttachment(ctx, src.GroupID, src.TokenHash, dst, store.AttachmentQuota{}, store.SignatureAnswer{}); err != nil {
				t.Errorf("copy %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if u, err := stores[0].GroupAttachmentUsage(ctx, []byte("target group")); err != nil || u.Count != copies {
		t.Fatalf("target group usage %+v, %v; want %d copies", u, err, copies)
	}

	lastRefs := make(chan int, copies+1)
	for i := 0; i <= copies; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			group := []byte("target group")
			if i == 0 {
				group = src.GroupID
			}
			a, last, err := stores[i%2].DeleteAttachment(ctx, group, hash(i), "")
			if err != nil || a.Object != src.Object {
				t.Errorf("delete %d: object %q, %v", i, a.Object, err)
				return
			}
			if last {
				lastRefs <- i
			}
		}()
	}
	wg.Wait()
	close(lastRefs)
	if n := len(lastRefs); n != 1 {
		t.Fatalf("%d deletes found the last reference, want 1", n)
	}
	names, err := stores[1].UnreferencedObjects(ctx, "", 10)
	if err != nil || len(names) != 1 || names[0] != src.Object {
		t.Fatalf("unreferenced objects %q, %v; want [%s]", names, err, src.Object)
	}
}
