package caddymodule

import (
	"encoding/json"
	"fmt"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
)

// clusterStorages are the attachment storages that service.ClusterPackage
// registers, by module name under http.mimi.attachments: the default
// build, this package with Caddy's standard modules, does not link them.
var clusterStorages = map[string]bool{"s3": true}

// missingClusterStorage returns an error naming service.ClusterPackage when name
// is one of clusterStorages and this build lacks its module, else nil:
// Caddy's own error would only say that the module is not registered.
func missingClusterStorage(name string) error {
	if !clusterStorages[name] {
		return nil
	}
	if _, err := caddy.GetModule("http.mimi.attachments." + name); err == nil {
		return nil
	}
	return fmt.Errorf("attachments storage %s needs the cluster build: %s", name, service.ClusterHint)
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
