package s3test

import (
	"testing"
)

// TestMakeBucket checks that a server holds the buckets MakeBucket adds
// beside the one Start created, and refuses a second bucket of one name.
func TestMakeBucket(t *testing.T) {
	srv := Start(t)
	c := srv.Client(t)
	for _, name := range []string{"mimi-a", "mimi-b"} {
		t.Run(name, func(t *testing.T) {
			if err := srv.MakeBucket(t.Context(), name); err != nil {
				t.Fatal(err)
			}
			ok, err := c.BucketExists(t.Context(), name)
			if err != nil || !ok {
				t.Fatalf("bucket %s after MakeBucket: exists %v, %v", name, ok, err)
			}
		})
	}
	if err := srv.MakeBucket(t.Context(), "mimi-a"); err == nil {
		t.Fatal("a second bucket mimi-a was made")
	}
	if ok, err := c.BucketExists(t.Context(), srv.Bucket); err != nil || !ok {
		t.Fatalf("Start's bucket %s: exists %v, %v", srv.Bucket, ok, err)
	}
}
