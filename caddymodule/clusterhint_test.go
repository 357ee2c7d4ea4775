package caddymodule

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
)

// TestMissingClusterStorage checks the hint for a cluster storage whose
// module the build lacks. These tests link the cluster package, so s3 is
// registered; a made-up cluster storage stands for it in a default build
// (cmd/caddy's tests check the real one).
func TestMissingClusterStorage(t *testing.T) {
	clusterStorages["made_up"] = true
	t.Cleanup(func() { delete(clusterStorages, "made_up") })
	for _, tc := range []struct {
		raw     string
		missing bool
	}{
		{`{"backend":"made_up","endpoint":"e"}`, true},
		{`{"backend":"s3","endpoint":"e","bucket":"b"}`, false},
		{`{"backend":"local"}`, false},
		{`{"backend":"not_a_module"}`, false}, // Caddy's own error
		{`not json`, false},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			err := missingClusterStorageRaw(json.RawMessage(tc.raw))
			if (err != nil) != tc.missing {
				t.Fatalf("error %v, want one: %v", err, tc.missing)
			}
			if err != nil && !strings.Contains(err.Error(), service.ClusterPackage) {
				t.Fatalf("error %q does not name %s", err, service.ClusterPackage)
			}
		})
	}
}
