package caddymodule

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// hubConflicts counts the deliver_message and connection_request requests
// refused because the group's recorded hub is another provider than the
// sender (ds.Service.HubConflict): a peer that sent the first Welcome for
// a group it does not host, or a peer that is not the group's hub
// (docs/protocol.md §4.2, security considerations). It is package-level,
// so its values survive reloads. Its labels are bounded by the
// configuration: data_dir (one per provider) and request (deliver_message
// or connection_request); never the group or the sender, which peers
// choose: the log names them, sampled.
var hubConflicts = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy",
	Subsystem: "mimi",
	Name:      "hub_conflicts_total",
	Help:      "Peer requests refused because the group's recorded hub is another provider than the sender (see the log for the group, the recorded hub and the sender; DELETE /mimi/hubs forgets a wrong hub).",
}, []string{"data_dir", "request"})

// hubCaches holds the hub caches of the provisioned gateways of this
// process, so that DELETE /mimi/hubs drops the forgotten hub from each;
// the caches of other processes (a cluster's gateways) drop it when their
// store tells them (watchHubForgets), or keep it for at most
// ds.HubCacheTTL with a store that does not.
var hubCaches = struct {
	sync.Mutex
	m map[*ds.HubCache]struct{}
}{m: map[*ds.HubCache]struct{}{}}

// addHubCache registers c with hubCaches, until removeHubCache.
func addHubCache(c *ds.HubCache) {
	hubCaches.Lock()
	defer hubCaches.Unlock()
	hubCaches.m[c] = struct{}{}
}

// removeHubCache unregisters c.
func removeHubCache(c *ds.HubCache) {
	hubCaches.Lock()
	defer hubCaches.Unlock()
	delete(hubCaches.m, c)
}

// watchHubForgets has c drop the hubs that the gateways of other
// processes forget in the store st (store.HubForgetWatcher: PostgreSQL),
// and returns the function that ends it; with a store that no other
// process shares, the function does nothing.
func watchHubForgets(st store.Store, c *ds.HubCache) (stop func()) {
	w, ok := st.(store.HubForgetWatcher)
	if !ok {
		return func() {}
	}
	return w.WatchHubForgets(func(gid []byte) {
		if gid == nil {
			c.ForgetAll()
			return
		}
		c.Forget(gid)
	})
}

// forgetCachedHub drops group gid from every registered hub cache.
func forgetCachedHub(gid []byte) {
	hubCaches.Lock()
	defer hubCaches.Unlock()
	for c := range hubCaches.m {
		c.Forget(gid)
	}
}

// pooledService is an open service and its data directory.
type pooledService struct {
	dir string
	svc *service.Service
}

// runningServices lists the services of servicePool, copied out of the
// pool for the reason runningSenders gives.
func runningServices() []pooledService {
	var out []pooledService
	servicePool.Range(func(key, value any) bool {
		if svc, ok := value.(*service.Service); ok {
			dir, _ := key.(string)
			out = append(out, pooledService{dir: dir, svc: svc})
		}
		return true
	})
	return out
}

// hubView is one data directory's answer of /mimi/hubs: the hub
// recorded for the group (GET), the hub whose record was deleted
// (DELETE), or why there is none.
type hubView struct {
	Hub       string `json:"hub,omitempty"`
	Forgotten string `json:"forgotten,omitempty"`
	Error     string `json:"error,omitempty"`
}

// hubs serves /mimi/hubs?group_id=<hex> (the group id as the log prints
// it). GET answers, per data directory, the group's recorded hub (its
// own provider for a group hosted here). DELETE deletes the record of a
// group hosted elsewhere in every data directory, and drops it from this
// process's hub caches, so that the next Welcome for the group records
// its hub again; it leaves a group hosted here and the queued messages as
// they are. DELETE answers 200 when a record was deleted, 409 when the
// group is hosted here, 404 when no hub is recorded, 503 when a store
// failed (each data directory's answer says which).
func (adminOutbox) hubs(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodDelete {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed", r.Method)}
	}
	arg := r.URL.Query().Get("group_id")
	gid, err := hex.DecodeString(arg)
	if err != nil || len(gid) == 0 || len(gid) > store.MaxIDSize {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest,
			Err: fmt.Errorf("group_id %q is not a group id in hex (1 to %d bytes)", arg, store.MaxIDSize)}
	}
	out := map[string]hubView{}
	var forgotten, hosted, failed bool
	for _, ps := range runningServices() {
		var v hubView
		if r.Method == http.MethodGet {
			v.Hub, err = ps.svc.Store().GroupHub(r.Context(), gid)
		} else {
			v.Forgotten, err = ps.svc.Store().ForgetGroupHub(r.Context(), gid)
		}
		switch {
		case err == nil:
			forgotten = forgotten || v.Forgotten != ""
		case errors.Is(err, store.ErrNotFound):
			v.Error = "no hub recorded"
		case errors.Is(err, store.ErrGroupExists):
			v.Error, hosted = "hosted here: not deleted", true
		default:
			v.Error, failed = err.Error(), true
		}
		out[ps.dir] = v
	}
	status := http.StatusOK
	if r.Method == http.MethodDelete {
		if forgotten {
			forgetCachedHub(gid)
		}
		switch {
		case failed:
			status = http.StatusServiceUnavailable
		case forgotten:
		case hosted:
			status = http.StatusConflict
		default:
			status = http.StatusNotFound
		}
	} else if failed {
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(out)
}
