package main

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// buildTags are the tags xcaddy.sh builds with.
const buildTags = "nobadger,nomysql,nopgx"

// clusterClients are the client modules only the cluster backends need.
var clusterClients = []string{"jackc/pgx", "redis/go-redis", "minio/minio-go"}

// clusterPackage is what the errors of the default build name.
const clusterPackage = "github.com/caddy-mimi/caddy-mimi/caddymodule/cluster"

// TestClusterClientsLinked requires the default main (this one) to link
// none of the cluster clients, and cmd/caddy-cluster to link all of them,
// as go list sees their dependencies with xcaddy.sh's tags.
func TestClusterClientsLinked(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	for _, tc := range []struct {
		main   string
		linked bool
	}{
		{"github.com/caddy-mimi/caddy-mimi/cmd/caddy", false},
		{"github.com/caddy-mimi/caddy-mimi/cmd/caddy-cluster", true},
	} {
		t.Run(tc.main[strings.LastIndex(tc.main, "/")+1:], func(t *testing.T) {
			out, err := exec.Command(goCmd, "list", "-deps", "-tags", buildTags, tc.main).Output()
			if err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					t.Fatalf("go list: %v\n%s", err, ee.Stderr)
				}
				t.Fatalf("go list: %v", err)
			}
			deps := strings.Fields(string(out))
			for _, client := range clusterClients {
				var found string
				for _, d := range deps {
					if strings.Contains(d, client) {
						found = d
						break
					}
				}
				if (found != "") != tc.linked {
					if tc.linked {
						t.Errorf("%s does not link %s", tc.main, client)
					} else {
						t.Errorf("%s links %s (%s): the cluster clients belong in caddymodule/cluster", tc.main, client, found)
					}
				}
			}
		})
	}
}

// TestClusterBackendsMissing checks that in the default build each cluster
// backend is refused with an error that names the package adding it.
func TestClusterBackendsMissing(t *testing.T) {
	for _, tc := range []struct {
		name string
		try  func(t *testing.T) error
	}{
		{"store postgres", func(t *testing.T) error {
			s, err := service.Open(t.Context(), service.Options{DataDir: t.TempDir(),
				Store: service.StoreOptions{Postgres: "postgres://127.0.0.1:1/x"}, KeySecret: make([]byte, provider.KeySecretSize)})
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.try(t)
			if err == nil {
				t.Fatal("the default build accepted it")
			}
			t.Log(err)
			if !strings.Contains(err.Error(), clusterPackage) {
				t.Fatalf("error %q does not name %s", err, clusterPackage)
			}
		})
	}
}
