package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/federation"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// senderPool holds one federation sender per data directory, beside the
// service of servicePool: one process drains a provider's outbox across
// handler instances and config reloads. The sender signs with the
// service's key ring and reaches peers through the service's current key
// fetcher, so a reload that changes the federation options takes effect
// for it too. It stops when the last gateway config using it is cleaned
// up, before the service's store closes.
var senderPool = caddy.NewUsagePool()

// outboxLeaseTTL is the drain lease's ttl of the senders of gateways on
// PostgreSQL (federation.Sender.LeaseTTL): how long a destination whose
// gateway died waits for another to take it over. Tests shorten it.
var outboxLeaseTTL = federation.DefaultLeaseTTL

// leaseHolder names a sender in the drain leases, as an operator reading
// the leases table wants it: host name, process id and a random part
// (a process may run several senders, one per data directory).
func leaseHolder() string {
	host, _ := os.Hostname()
	if len(host) > 200 {
		host = host[:200]
	}
	return fmt.Sprintf("%s/%d/%016x", host, os.Getpid(), rand.Uint64())
}

// runningSender is a sender and the goroutine that runs it.
type runningSender struct {
	sender *federation.Sender
	cancel context.CancelFunc
	done   chan struct{}
}

// pooledSender is a running sender and its data directory, as
// runningSenders copies them out of senderPool.
type pooledSender struct {
	dir string
	rs  *runningSender
}

// runningSenders lists the senders of senderPool. The admin routes and
// the metrics work on the list, outside the pool: Range holds the pool's
// read lock, under which a slow store read or reset would hold up config
// loads (LoadOrNew), cleanups and, since a waiting writer blocks new
// readers, every other Range. A sender of the list may be stopped
// meanwhile; its store then refuses the work.
func runningSenders() []pooledSender {
	var out []pooledSender
	senderPool.Range(func(key, value any) bool {
		if rs, ok := value.(*runningSender); ok {
			dir, _ := key.(string)
			out = append(out, pooledSender{dir: dir, rs: rs})
		}
		return true
	})
	return out
}

// Destruct stops the sender and waits for it: the messages it was sending
// stay in the outbox unless their answer came.
func (r *runningSender) Destruct() error {
	r.cancel()
	<-r.done
	return nil
}

// startSender returns the running sender of g's data directory, starting
// it on first use.
func (g *Gateway) startSender(svc *service.Service, backend *federation.Backend) (*federation.Sender, error) {
	v, _, err := senderPool.LoadOrNew(g.DataDir, func() (caddy.Destructor, error) {
		s := &federation.Sender{
			Outbox:    svc.Store(),
			Transport: federation.Clients{Keys: svc.Keys(), Fetcher: svc.Fetcher},
			Logger:    g.sampled.Named("federation"),
		}
		if st := g.Store; st != nil && st.Backend == storePostgres {
			// Other gateways drain the same outbox: one at a time per
			// destination, under its drain lease.
			s.Leases, s.LeaseTTL, s.Holder = svc.Store(), outboxLeaseTTL, leaseHolder()
		}
		// A new sender serves this config alone until the mimi app
		// starts it (commit): it runs with this config's policy and
		// backend from the start, not the defaults, which would give up
		// on messages younger than this config's give_up_after.
		s.SetPolicy(g.Federation.senderPolicy())
		s.SetBackend(backend)
		ctx, cancel := context.WithCancel(context.Background())
		r := &runningSender{sender: s, cancel: cancel, done: make(chan struct{})}
		go func() {
			defer close(r.done)
			if err := s.Run(ctx); err != nil {
				g.logger.Error("federation sender stopped", zap.Error(err))
			}
		}()
		return r, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*runningSender).sender, nil
}

// Metrics of the outbox, labelled by data directory (one per provider).
var (
	outboxCounterDescs = map[string]*prometheus.Desc{}
	outboxMessagesDesc = prometheus.NewDesc("caddy_mimi_outbox_messages",
		"Messages waiting in the outbox for a destination provider.", []string{"data_dir", "destination"}, nil)
	outboxOldestDesc = prometheus.NewDesc("caddy_mimi_outbox_oldest_age_seconds",
		"Age of the oldest message waiting in the outbox for a destination provider.", []string{"data_dir", "destination"}, nil)
	outboxFailuresDesc = prometheus.NewDesc("caddy_mimi_outbox_destination_failures",
		"Delivery attempts to a destination that failed since its last success.", []string{"data_dir", "destination"}, nil)
	outboxBytesDesc = prometheus.NewDesc("caddy_mimi_outbox_bytes",
		"Bytes of the messages waiting in the outbox for a destination provider (what federation max_backlog_bytes bounds).",
		[]string{"data_dir", "destination"}, nil)
	outboxDroppedDesc = prometheus.NewDesc("caddy_mimi_outbox_dropped_total",
		"Outbox messages for a destination provider dropped before delivery: reason backlog_full (not written, its backlog was at its bound), admin_reset (removed by POST /mimi/outbox/reset). Kept in the store across restarts.",
		[]string{"data_dir", "destination", "reason"}, nil)
	fanoutLatencyDesc = prometheus.NewDesc("caddy_mimi_fanout_latency_seconds",
		"End-to-end fan-out latency: from the acceptance of a message to the destination's answer (a provider, or @backend, the legacy backend), retries included.",
		[]string{"data_dir", "destination"}, nil)
)

func init() {
	for name, help := range map[string]string{
		"attempts":  "Delivery attempts of the federation sender: deliver_message requests and legacy backend POSTs.",
		"delivered": "Outbox messages a destination accepted.",
		"retried":   "Delivery attempts that failed and will be retried.",
		"rejected":  "Outbox messages a destination refused for good, dropped.",
		"given_up":  "Outbox messages dropped when they reached the give-up age.",
	} {
		outboxCounterDescs[name] = prometheus.NewDesc("caddy_mimi_outbox_"+name+"_total", help, []string{"data_dir"}, nil)
	}
}

// outboxStats collects the outbox's backlog and the senders' counters at
// scrape time.
type outboxStats struct{}

// Describe implements prometheus.Collector.
func (outboxStats) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range outboxCounterDescs {
		ch <- d
	}
	ch <- outboxMessagesDesc
	ch <- outboxOldestDesc
	ch <- outboxFailuresDesc
	ch <- outboxBytesDesc
	ch <- outboxDroppedDesc
	ch <- fanoutLatencyDesc
}

// Collect implements prometheus.Collector.
func (outboxStats) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, ps := range runningSenders() {
		r, dir := ps.rs, ps.dir
		st := r.sender.Stats()
		for name, v := range map[string]uint64{"attempts": st.Attempts, "delivered": st.Delivered, "retried": st.Retried,
			"rejected": st.Rejected, "given_up": st.GivenUp} {
			ch <- prometheus.MustNewConstMetric(outboxCounterDescs[name], prometheus.CounterValue, float64(v), dir)
		}
		for dest, l := range st.Latency {
			buckets := make(map[float64]uint64, len(federation.LatencyBounds))
			for i, b := range federation.LatencyBounds {
				buckets[b] = l.Cumulative[i]
			}
			ch <- prometheus.MustNewConstHistogram(fanoutLatencyDesc, l.Count, l.Sum.Seconds(), buckets, dir, dest)
		}
		for _, d := range r.sender.Status() {
			ch <- prometheus.MustNewConstMetric(outboxFailuresDesc, prometheus.GaugeValue, float64(d.Failures), dir, d.Destination)
		}
		if b, ok := r.sender.Outbox.(store.OutboxBacklog); ok {
			if list, err := b.OutboxBacklog(ctx); err == nil {
				for _, x := range list {
					ch <- prometheus.MustNewConstMetric(outboxMessagesDesc, prometheus.GaugeValue, float64(x.Messages), dir, x.Destination)
					ch <- prometheus.MustNewConstMetric(outboxBytesDesc, prometheus.GaugeValue, float64(x.Bytes), dir, x.Destination)
					var age float64
					if !x.Oldest.IsZero() {
						age = time.Since(x.Oldest).Seconds()
					}
					ch <- prometheus.MustNewConstMetric(outboxOldestDesc, prometheus.GaugeValue, age, dir, x.Destination)
					ch <- prometheus.MustNewConstMetric(outboxDroppedDesc, prometheus.CounterValue, float64(x.Dropped.BacklogFull), dir, x.Destination, "backlog_full")
					ch <- prometheus.MustNewConstMetric(outboxDroppedDesc, prometheus.CounterValue, float64(x.Dropped.AdminReset), dir, x.Destination, "admin_reset")
				}
			}
		}
	}
}

// adminOutbox is the admin API's view of the outboxes (module
// admin.api.mimi): GET /mimi/outbox lists, per data directory, each
// destination's backlog, drops and delivery status; POST
// /mimi/outbox/retry?destination=<domain> (or @backend, the legacy
// backend) ends that destination's backoff in every sender, so it is
// tried at once; POST /mimi/outbox/reset?destination=<domain> drops that
// destination's whole backlog in every data directory, for a peer the
// operator decided is gone, and answers the counts dropped. /mimi/hubs
// (hubs.go) shows and deletes a group's recorded hub.
type adminOutbox struct{}

func init() { caddy.RegisterModule(adminOutbox{}) }

// CaddyModule returns the Caddy module information.
func (adminOutbox) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.mimi", New: func() caddy.Module { return new(adminOutbox) }}
}

// Routes implements caddy.AdminRouter.
func (a adminOutbox) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/mimi/outbox", Handler: caddy.AdminHandlerFunc(a.list)},
		{Pattern: "/mimi/outbox/retry", Handler: caddy.AdminHandlerFunc(a.retry)},
		{Pattern: "/mimi/outbox/reset", Handler: caddy.AdminHandlerFunc(a.reset)},
		{Pattern: "/mimi/hubs", Handler: caddy.AdminHandlerFunc(a.hubs)},
	}
}

// droppedView is outboxView.Dropped.
type droppedView struct {
	BacklogFull uint64 `json:"backlog_full"`
	AdminReset  uint64 `json:"admin_reset"`
	GivenUp     uint64 `json:"given_up"`
}

// outboxView is one destination in GET /mimi/outbox.
type outboxView struct {
	Destination string    `json:"destination"`
	Messages    int       `json:"messages"`
	Bytes       int64     `json:"bytes"`
	Oldest      time.Time `json:"oldest,omitzero"`
	// Dropped counts, by reason, the messages dropped before delivery:
	// backlog_full and admin_reset from the store (durable), given_up
	// by this process's sender since it started.
	Dropped     droppedView `json:"dropped"`
	Failures    int         `json:"failures"`
	LastError   string      `json:"last_error,omitempty"`
	LastAttempt time.Time   `json:"last_attempt,omitzero"`
	LastSuccess time.Time   `json:"last_success,omitzero"`
	NextAttempt time.Time   `json:"next_attempt,omitzero"`
}

func (adminOutbox) list(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed", r.Method)}
	}
	out := map[string][]outboxView{}
	for _, ps := range runningSenders() {
		rs, dir := ps.rs, ps.dir
		views := map[string]*outboxView{}
		view := func(d string) *outboxView {
			if views[d] == nil {
				views[d] = &outboxView{Destination: d}
			}
			return views[d]
		}
		if b, ok := rs.sender.Outbox.(store.OutboxBacklog); ok {
			list, err := b.OutboxBacklog(r.Context())
			if err != nil {
				return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("reading the outbox: %w", err)}
			}
			for _, x := range list {
				v := view(x.Destination)
				v.Messages, v.Bytes, v.Oldest = x.Messages, x.Bytes, x.Oldest
				v.Dropped.BacklogFull, v.Dropped.AdminReset = x.Dropped.BacklogFull, x.Dropped.AdminReset
			}
		}
		for _, st := range rs.sender.Status() {
			v := view(st.Destination)
			v.Failures, v.LastError, v.LastAttempt, v.LastSuccess, v.NextAttempt = st.Failures, st.LastError, st.LastAttempt, st.LastSuccess, st.NextAttempt
			v.Dropped.GivenUp = st.GivenUp
		}
		list := make([]outboxView, 0, len(views))
		for _, v := range views {
			list = append(list, *v)
		}
		slices.SortFunc(list, func(a, b outboxView) int { return strings.Compare(a.Destination, b.Destination) })
		out[dir] = list
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(out)
}

// destinationArg checks the method of a POST to a destination and returns
// its destination query parameter.
func destinationArg(r *http.Request) (string, error) {
	if r.Method != http.MethodPost {
		return "", caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed", r.Method)}
	}
	dest := r.URL.Query().Get("destination")
	if !moh.ValidFQDN([]byte(dest)) && dest != store.BackendDestination {
		return "", caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("destination %q is not a provider domain or %s", dest, store.BackendDestination)}
	}
	return dest, nil
}

func (adminOutbox) retry(w http.ResponseWriter, r *http.Request) error {
	dest, err := destinationArg(r)
	if err != nil {
		return err
	}
	for _, ps := range runningSenders() {
		ps.rs.sender.Wake(dest)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// resetView is one data directory's answer of POST /mimi/outbox/reset:
// the messages dropped, or why the reset failed there.
type resetView struct {
	Destination string `json:"destination"`
	Dropped     int    `json:"dropped"`
	Error       string `json:"error,omitempty"`
}

// reset drops the destination's backlog in every sender's outbox (each
// sender logs the count) and answers, per data directory, how many
// messages it dropped or why it failed: a failure in one data directory
// does not stop the others, and the answer is 503 when any failed, so
// that the operator learns what was dropped where and what to retry.
func (adminOutbox) reset(w http.ResponseWriter, r *http.Request) error {
	dest, err := destinationArg(r)
	if err != nil {
		return err
	}
	out := map[string]resetView{}
	status := http.StatusOK
	for _, ps := range runningSenders() {
		n, err := ps.rs.sender.Reset(r.Context(), dest)
		v := resetView{Destination: dest, Dropped: n}
		if err != nil {
			v.Error, status = err.Error(), http.StatusServiceUnavailable
		}
		out[ps.dir] = v
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(out)
}

var _ caddy.AdminRouter = adminOutbox{} // interface guard
