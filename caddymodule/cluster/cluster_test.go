package cluster

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	// The mimi directive, for the attempt of the s3 storage.
	_ "github.com/caddy-mimi/caddy-mimi/caddymodule"
	"github.com/caddy-mimi/caddy-mimi/internal/clustercheck"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/pgstore"
)

// TestRegistered checks that importing the package registers each cluster
// backend: an attempt to use one gets past the registry (to the server it
// cannot reach, for the store and the zone), where the default build stops.
func TestRegistered(t *testing.T) {
	for _, a := range clustercheck.Attempts {
		t.Run(a.Name, func(t *testing.T) {
			if err := a.Try(t); err != nil && strings.Contains(err.Error(), service.ClusterPackage) {
				t.Fatalf("not registered: %v", err)
			}
		})
	}
	if _, err := caddy.GetModule("http.mimi.attachments.s3"); err != nil {
		t.Errorf("the s3 storage module: %v", err)
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
