// Package clustercheck holds, for the tests of both builds, one attempt to
// use each cluster backend (store postgres, a rate-limit zone in redis,
// attachments storage s3): the default build must refuse each one naming
// the package that adds them (service.ClusterPackage), and the cluster
// build must get past that refusal.
package clustercheck

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// Attempt uses one cluster backend and returns its error. No server is
// there: a build that has the backend fails later, on the connection, or
// not at all.
type Attempt struct {
	Name string
	Try  func(t *testing.T) error
}

// Attempts are the three backends' attempts.
var Attempts = []Attempt{
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
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(`localhost:1 {
	mimi {
		provider localhost
		attachments {
			storage s3 {
				endpoint 127.0.0.1:1
				bucket b
			}
		}
	}
}`), nil)
		return err
	}},
}
