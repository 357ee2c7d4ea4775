package s3store_test

import (
	"context"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/internal/s3test"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/s3store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/storagetest"
)

// config returns a Config of srv under a prefix of its own.
func config(t *testing.T, srv *s3test.Server) s3store.Config {
	return s3store.Config{
		Endpoint:  srv.Endpoint,
		Bucket:    srv.Bucket,
		Prefix:    "t/" + storagetest.Name(t)[:16] + "/",
		Region:    srv.Region,
		AccessKey: srv.AccessKey,
		SecretKey: srv.SecretKey,
		Insecure:  true,
		PathStyle: true,
		PartSize:  s3store.MinPartSize,
	}
}

func open(t *testing.T, cfg s3store.Config) *s3store.Store {
	s, err := s3store.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestContract runs the storage contract on versitygw.
func TestContract(t *testing.T) {
	srv := s3test.Start(t)
	storagetest.Run(t, func(t *testing.T) storage.Backend { return open(t, config(t, srv)) })
}

var _ = context.Background
