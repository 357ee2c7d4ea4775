package caddymodule

import (
	"encoding/json"
	"fmt"

	"github.com/caddyserver/caddy/v2"
)

// clusterPackage is the package whose import adds the cluster backends
// (store postgres, redis zones, attachments storage s3) to a build: the
// default build, this package with Caddy's standard modules, does not
// link their clients.
const clusterPackage = "github.com/caddy-mimi/caddy-mimi/caddymodule/cluster"

// clusterStorages are the attachment storages that clusterPackage
// registers, by module name under http.mimi.attachments.
var clusterStorages = map[string]bool{"s3": true}

// missingClusterStorage returns an error naming clusterPackage when name
// is one of clusterStorages and this build lacks its module, else nil:
// Caddy's own error would only say that the module is not registered.
func missingClusterStorage(name string) error {
	if !clusterStorages[name] {
		return nil
	}
	if _, err := caddy.GetModule("http.mimi.attachments." + name); err == nil {
		return nil
	}
	return fmt.Errorf("attachments storage %s needs the cluster build: build with %s (xcaddy build --with %[2]s, or CLUSTER=1 ./xcaddy.sh)",
		name, clusterPackage)
}

// missingClusterStorageRaw is missingClusterStorage for the JSON of a
// storage module, named by its backend key.
func missingClusterStorageRaw(raw json.RawMessage) error {
	var k struct {
		Backend string `json:"backend"`
	}
	if json.Unmarshal(raw, &k) != nil {
		return nil // Caddy's LoadModule reports it
	}
	return missingClusterStorage(k.Backend)
}
