package caddymodule

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
)

// register registers collectors on reg. The collectors are package-level
// (here or in admission), so their values survive reloads; a registration
// by another handler of the same config is fine.
func register(reg *prometheus.Registry, logger *zap.Logger, collectors ...prometheus.Collector) {
	if reg == nil {
		return
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				logger.Warn("registering metrics", zap.Error(err))
			}
		}
	}
}

// Descriptions of the store metrics, labelled by data directory (one per
// provider, a configuration value).
var (
	storeCommitsDesc = prometheus.NewDesc("caddy_mimi_store_commits_total",
		"Write transactions the embedded store committed.", []string{"data_dir"}, nil)
	storeSyncsDesc = prometheus.NewDesc("caddy_mimi_store_syncs_total",
		"fsyncs of the embedded store's write-ahead log by its syncer, each covering one or more commits (0 where each commit syncs itself).",
		[]string{"data_dir"}, nil)
	storeWritesDesc = prometheus.NewDesc("caddy_mimi_store_writes_total",
		"Durable writes those transactions carried; writes / commits is the mean batch size of the group commit.",
		[]string{"data_dir"}, nil)
	storeStoppedDesc = prometheus.NewDesc("caddy_mimi_store_stopped",
		"1 once the embedded store stopped after an fsync or checkpoint I/O failure (it then refuses writes until the gateway restarts and recovers from its log), else 0.",
		[]string{"data_dir"}, nil)
	storeRoundTripsDesc = prometheus.NewDesc("caddy_mimi_store_round_trips_total",
		"Round trips of the PostgreSQL store's connections to the database (a query, a batch, a BEGIN or a COMMIT each).",
		[]string{"data_dir"}, nil)
)

// roundTripper is a store that counts its round trips to a database, as
// the PostgreSQL store of the cluster build does (pgstore.Store.RoundTrips),
// matched without linking it.
type roundTripper interface {
	RoundTrips() uint64
}

// storeStats collects the counters of every open service's store at
// scrape time: the group-commit counters of the embedded store, the round
// trips of the PostgreSQL store.
type storeStats struct{}

// Describe implements prometheus.Collector.
func (storeStats) Describe(ch chan<- *prometheus.Desc) {
	ch <- storeCommitsDesc
	ch <- storeSyncsDesc
	ch <- storeWritesDesc
	ch <- storeStoppedDesc
	ch <- storeRoundTripsDesc
}

// Collect implements prometheus.Collector.
func (storeStats) Collect(ch chan<- prometheus.Metric) {
	servicePool.Range(func(key, value any) bool {
		svc, ok := value.(*service.Service)
		if !ok {
			return true
		}
		dir, _ := key.(string)
		switch s := svc.Store().(type) {
		case interface{ Stats() sqlitestore.Stats }:
			st := s.Stats()
			ch <- prometheus.MustNewConstMetric(storeCommitsDesc, prometheus.CounterValue, float64(st.Commits), dir)
			ch <- prometheus.MustNewConstMetric(storeSyncsDesc, prometheus.CounterValue, float64(st.Syncs), dir)
			ch <- prometheus.MustNewConstMetric(storeWritesDesc, prometheus.CounterValue, float64(st.Ops), dir)
			stopped := 0.0
			if st.Stopped != nil {
				stopped = 1
			}
			ch <- prometheus.MustNewConstMetric(storeStoppedDesc, prometheus.GaugeValue, stopped, dir)
		case roundTripper:
			ch <- prometheus.MustNewConstMetric(storeRoundTripsDesc, prometheus.CounterValue, float64(s.RoundTrips()), dir)
		}
		return true
	})
}
