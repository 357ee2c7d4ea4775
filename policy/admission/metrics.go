package admission

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// Zone labels of the decisions that are not rate-limit zones.
const (
	zonePrivacyPass = "privacy_pass"
	zonePeers       = "peers"
	zoneIssuer      = "issuer"
)

// decisions counts the admission policy's decisions. It is package-level,
// so its values survive configuration reloads. The labels are bounded by
// the configuration: zone (a zone name, or privacy_pass, peers, issuer),
// endpoint (an endpoint name) and outcome; never a client, provider, group
// or token.
//
// Outcomes: allowed, limited (refused rate_limited) and over_limit_token
// (over the limit of an over_limit token zone, so the token check decides)
// for rate-limit zones; token_accepted, token_missing, token_refused and
// token_unavailable (Privacy Pass redemption; the last when the
// double-spend store failed); refused (peers, for which endpoint is
// "provider"); issued and issue_refused (issuer, endpoint token_request).
var decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy",
	Subsystem: "mimi",
	Name:      "policy_decisions_total",
	Help:      "Admission policy decisions of the MIMI gateway, by zone, endpoint and outcome.",
}, []string{"zone", "endpoint", "outcome"})

// Collectors returns the policy's collectors:
// caddy_mimi_policy_decisions_total{zone,endpoint,outcome} and, for every
// live zone, caddy_mimi_rate_limit_keys{zone} and
// caddy_mimi_rate_limit_evictions_total{zone}, and for every zone in
// Redis caddy_mimi_rate_limit_redis_healthy{zone} and
// caddy_mimi_rate_limit_redis_fallbacks_total{zone}. They are package-level, so
// the caller registers them in each configuration's registry and tolerates
// prometheus.AlreadyRegisteredError.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{decisions, zoneStats{}}
}

// Descriptions of the zone gauges.
var (
	zoneKeysDesc = prometheus.NewDesc("caddy_mimi_rate_limit_keys",
		"Buckets held by a rate-limit zone.", []string{"zone"}, nil)
	zoneEvictionsDesc = prometheus.NewDesc("caddy_mimi_rate_limit_evictions_total",
		"Buckets a rate-limit zone dropped before they had refilled because it was at max_keys; "+
			"a steady rise means max_keys is too small or keys are being sprayed.", []string{"zone"}, nil)
	zoneRedisHealthyDesc = prometheus.NewDesc("caddy_mimi_rate_limit_redis_healthy",
		"1 while a Redis rate-limit zone decides in Redis, 0 while it falls back to per-process buckets.",
		[]string{"zone"}, nil)
	zoneRedisFallbacksDesc = prometheus.NewDesc("caddy_mimi_rate_limit_redis_fallbacks_total",
		"Events a Redis rate-limit zone decided with per-process buckets because Redis failed or timed out.",
		[]string{"zone"}, nil)
)

// zoneStats collects the size and evictions of every live zone at scrape
// time. Zones of the same name in different scopes are summed, so the zone
// label stays the configured name.
type zoneStats struct{}

// Describe implements prometheus.Collector.
func (zoneStats) Describe(ch chan<- *prometheus.Desc) {
	ch <- zoneKeysDesc
	ch <- zoneEvictionsDesc
	ch <- zoneRedisHealthyDesc
	ch <- zoneRedisFallbacksDesc
}

// Collect implements prometheus.Collector.
func (zoneStats) Collect(ch chan<- prometheus.Metric) {
	keys := map[string]int{}
	evictions := map[string]uint64{}
	healthy := map[string]bool{} // zones in Redis: all of that name healthy
	fallbacks := map[string]uint64{}
	zones.each(func(z *ratelimit.Zone) {
		st := z.Stats()
		keys[z.Name()] += st.Keys
		evictions[z.Name()] += st.Evictions
		fallbacks[z.Name()] += st.RedisFallbacks
		if st.Redis {
			h, seen := healthy[z.Name()]
			healthy[z.Name()] = st.RedisHealthy && (h || !seen)
		}
	})
	for name, h := range healthy {
		v := 0.0
		if h {
			v = 1
		}
		if m, err := prometheus.NewConstMetric(zoneRedisHealthyDesc, prometheus.GaugeValue, v, name); err == nil {
			ch <- m
		}
		if m, err := prometheus.NewConstMetric(zoneRedisFallbacksDesc, prometheus.CounterValue, float64(fallbacks[name]), name); err == nil {
			ch <- m
		}
	}
	for name, n := range keys {
		if m, err := prometheus.NewConstMetric(zoneKeysDesc, prometheus.GaugeValue, float64(n), name); err == nil {
			ch <- m
		}
		if m, err := prometheus.NewConstMetric(zoneEvictionsDesc, prometheus.CounterValue, float64(evictions[name]), name); err == nil {
			ch <- m
		}
	}
}

// tokenCounters are the Privacy Pass outcomes on one endpoint.
type tokenCounters struct {
	accepted, missing, refused, unavailable prometheus.Counter
}

func newTokenCounters(endpoint string) tokenCounters {
	return tokenCounters{
		accepted:    decisions.WithLabelValues(zonePrivacyPass, endpoint, "token_accepted"),
		missing:     decisions.WithLabelValues(zonePrivacyPass, endpoint, "token_missing"),
		refused:     decisions.WithLabelValues(zonePrivacyPass, endpoint, "token_refused"),
		unavailable: decisions.WithLabelValues(zonePrivacyPass, endpoint, "token_unavailable"),
	}
}

// peerCounter counts a peers-list outcome.
func peerCounter(outcome string) prometheus.Counter {
	return decisions.WithLabelValues(zonePeers, "provider", outcome)
}

// issuerCounter counts an issuer outcome.
func issuerCounter(outcome string) prometheus.Counter {
	return decisions.WithLabelValues(zoneIssuer, "token_request", outcome)
}
