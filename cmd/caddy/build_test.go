package main

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/internal/clustercheck"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
)

// buildTags are the tags xcaddy.sh builds with.
const buildTags = "nobadger,nomysql,nopgx"

// clusterClients are the client modules only the cluster backends need.
var clusterClients = []string{"jackc/pgx", "redis/go-redis", "minio/minio-go"}

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
	for _, a := range clustercheck.Attempts {
		t.Run(a.Name, func(t *testing.T) {
			err := a.Try(t)
			if err == nil {
				t.Fatal("the default build accepted it")
			}
			t.Log(err)
			if !strings.Contains(err.Error(), service.ClusterPackage) {
				t.Fatalf("error %q does not name %s", err, service.ClusterPackage)
			}
		})
	}
}
