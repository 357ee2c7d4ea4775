package cluster

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/pgstore"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// TestRegistered checks that importing the package registers each cluster
// backend: a configuration naming one gets past the registry (to the
// server it cannot reach, for the store), where the default build stops.
func TestRegistered(t *testing.T) {
	for _, tc := range []struct {
		name string
		try  func(t *testing.T) error
	}{
		{"store postgres", func(t *testing.T) error {
			s, err := service.Open(t.Context(), service.Options{DataDir: t.TempDir(),
				Store:     service.StoreOptions{Postgres: "postgres://127.0.0.1:1/x?connect_timeout=1"},
				KeySecret: make([]byte, provider.KeySecretSize)})
			if err == nil {
				s.Close()
			}
			return err
		}},
		{"redis zone", func(t *testing.T) error {
			z, err := ratelimit.NewZone("z", ratelimit.Config{Rate: 1, Burst: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer z.Destruct() //nolint:errcheck
			return z.SetRedis(&ratelimit.RedisConfig{Addr: "127.0.0.1:1", Timeout: time.Second}, nil)
		}},
		{"attachments storage s3", func(t *testing.T) error {
			_, err := caddy.GetModule("http.mimi.attachments.s3")
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.try(t); err != nil && strings.Contains(err.Error(), service.ClusterPackage) {
				t.Fatalf("not registered: %v", err)
			}
		})
	}
}

// TestDefaultMaxConns checks that the pool size the service passes when
// none is configured is pgstore's own default, which StoreOptions.String
// names.
func TestDefaultMaxConns(t *testing.T) {
	if service.DefaultMaxConns != pgstore.DefaultMaxConns {
		t.Errorf("service.DefaultMaxConns %d, pgstore.DefaultMaxConns %d: they must agree", service.DefaultMaxConns, pgstore.DefaultMaxConns)
	}
}
