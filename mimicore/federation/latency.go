package federation

import (
	"sync/atomic"
	"time"
)

// LatencyBounds are the upper bounds, in seconds, of the buckets of the
// fan-out latency histogram: from a millisecond on loopback to the day a
// message may wait for a peer that is down.
var LatencyBounds = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600}

// latencyHistogram counts fan-out latencies in LatencyBounds' buckets,
// without locks.
type latencyHistogram struct {
	counts [21]atomic.Uint64 // one per bound, then +Inf
	sumNS  atomic.Int64
}

// observe counts d.
func (h *latencyHistogram) observe(d time.Duration) {
	if d < 0 {
		d = 0
	}
	sec := d.Seconds()
	i := 0
	for i < len(LatencyBounds) && sec > LatencyBounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNS.Add(int64(d))
}

// snapshot reads the histogram.
func (h *latencyHistogram) snapshot() Latency {
	l := Latency{Cumulative: make([]uint64, len(LatencyBounds))}
	var total uint64
	for i := range LatencyBounds {
		total += h.counts[i].Load()
		l.Cumulative[i] = total
	}
	l.Count = total + h.counts[len(LatencyBounds)].Load()
	l.Sum = time.Duration(h.sumNS.Load())
	return l
}

// Latency is the distribution of end-to-end fan-out latencies: for each
// message a destination (a peer, or the legacy backend) accepted, the
// time from its acceptance (the outbox write, OutboxEntry.Enqueued) to
// the destination's answer, retries and backoff included.
type Latency struct {
	// Cumulative[i] counts the latencies of at most LatencyBounds[i]
	// seconds.
	Cumulative []uint64
	// Count and Sum are the number and the total of all latencies.
	Count uint64
	Sum   time.Duration
}
