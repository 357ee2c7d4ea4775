package pgstore

import (
	"context"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
)

// Stats counts a Store's traffic with the database since Open.
type Stats struct {
	// RoundTrips is the number of times a connection of the pool sent
	// something to the server and waited for its answer: a query or an
	// Exec (a BEGIN and a COMMIT each count), a batch sent with SendBatch
	// (one, whatever it holds), a CopyFrom, and a statement prepared on
	// a connection for the first time (pgx prepares each statement once
	// per connection and caches it). Not counted: the statements a batch
	// prepares before it is sent the first time on a connection (one
	// more round trip then), the pool's pings of a connection idle for
	// over a second, connecting, and the listener's LISTEN.
	RoundTrips uint64
}

// Stats reports the counters. It is cheap and safe to call concurrently,
// also after Close.
func (s *Store) Stats() Stats {
	return Stats{RoundTrips: s.RoundTrips()}
}

// RoundTrips is Stats().RoundTrips, for callers that match the store by
// this method without importing the package (the gateway's metrics).
func (s *Store) RoundTrips() uint64 { return s.trips.n.Load() }

// roundTrips is the pool's pgx tracer: it counts the round trips of
// Stats.RoundTrips, one at each start of a query, batch or copy and at
// each end of a prepare that reached the server.
type roundTrips struct {
	n atomic.Uint64
}

// TraceQueryStart implements pgx.QueryTracer.
func (r *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	r.n.Add(1)
	return ctx
}

// TraceQueryEnd implements pgx.QueryTracer.
func (*roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TraceBatchStart implements pgx.BatchTracer.
func (r *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	r.n.Add(1)
	return ctx
}

// TraceBatchQuery implements pgx.BatchTracer: a batch's statements share
// its round trip.
func (*roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

// TraceBatchEnd implements pgx.BatchTracer.
func (*roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// TraceCopyFromStart implements pgx.CopyFromTracer.
func (r *roundTrips) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceCopyFromStartData) context.Context {
	r.n.Add(1)
	return ctx
}

// TraceCopyFromEnd implements pgx.CopyFromTracer.
func (*roundTrips) TraceCopyFromEnd(context.Context, *pgx.Conn, pgx.TraceCopyFromEndData) {}

// TracePrepareStart implements pgx.PrepareTracer. pgx calls it also for a
// statement the connection prepared already, which costs nothing: the
// round trip is counted at the end, when it happened.
func (*roundTrips) TracePrepareStart(ctx context.Context, _ *pgx.Conn, _ pgx.TracePrepareStartData) context.Context {
	return ctx
}

// TracePrepareEnd implements pgx.PrepareTracer.
func (r *roundTrips) TracePrepareEnd(_ context.Context, _ *pgx.Conn, data pgx.TracePrepareEndData) {
	if !data.AlreadyPrepared {
		r.n.Add(1)
	}
}

// Interface guards.
var (
	_ pgx.QueryTracer    = (*roundTrips)(nil)
	_ pgx.BatchTracer    = (*roundTrips)(nil)
	_ pgx.CopyFromTracer = (*roundTrips)(nil)
	_ pgx.PrepareTracer  = (*roundTrips)(nil)
)
