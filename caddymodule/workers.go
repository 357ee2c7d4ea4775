package caddymodule

import (
	"net/http"
	"runtime/debug"
	"sync"

	"go.uber.org/zap"
)

// maxWorkers bounds the goroutines of the worker pool. Past it, requests
// are served on their own goroutines.
const maxWorkers = 128

// workers runs the gateway's requests on long-lived goroutines. The HTTP
// servers start a goroutine per request, whose stack starts small (about
// the mean of the process's stacks at the last GC); a provider request's
// work needs a larger one, and the runtime grows a stack by copying it and
// adjusting every frame on it, which deep inside Caddy's middleware chain
// cost 8 % of the server's CPU per signed request in a profile. A worker's
// stack holds only the worker's frames below the work: it grows once,
// cheaply, and again as cheaply after the GC shrinks it while idle.
//
// A request for which no worker is idle and none can be started runs on
// its own goroutine, as without the pool: the pool never queues work.
var workers = newWorkerPool(maxWorkers)

// workerPool is a set of goroutines waiting for exchanges to serve. Its
// workers are started on demand and never stop: an idle one is a parked
// goroutine, whose stack the GC shrinks.
type workerPool struct {
	max int

	mu      sync.Mutex
	idle    []*worker // the last one idle first: its stack and caches are warm
	started int
}

// worker is a goroutine of the pool and its inbox.
type worker struct {
	work chan *exchange // buffered: the pool never waits to hand work over
}

// newWorkerPool returns a pool of at most max workers.
func newWorkerPool(max int) *workerPool {
	return &workerPool{max: max}
}

// serve runs x.rt.serve for x on a worker and waits until it returns; a
// panic in it is raised again here, on the request's goroutine, so that
// the HTTP server handles it as before.
func (p *workerPool) serve(g *Gateway, x *exchange) {
	w := p.get()
	if w == nil {
		x.rt.serve(g, x) // every worker is busy
		return
	}
	x.g = g
	if x.done == nil {
		x.done = make(chan any, 1)
	}
	w.work <- x
	if v := <-x.done; v != nil {
		panic(v)
	}
}

// get takes an idle worker, or starts one, or returns nil when max are
// busy.
func (p *workerPool) get() *worker {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.idle); n > 0 {
		w := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		return w
	}
	if p.started == p.max {
		return nil
	}
	p.started++
	w := &worker{work: make(chan *exchange, 1)}
	go p.run(w)
	return w
}

// run serves the exchanges handed to w, forever. w is idle again before
// its caller learns the outcome, so that sequential requests share one
// worker.
func (p *workerPool) run(w *worker) {
	for x := range w.work {
		v := runExchange(x)
		p.mu.Lock()
		p.idle = append(p.idle, w)
		p.mu.Unlock()
		x.done <- v
	}
}

// runExchange serves x and returns the panic it raised, or nil. The
// panic's stack is logged here, since the request's goroutine, which
// panics again, has only its own.
func runExchange(x *exchange) (v any) {
	defer func() {
		v = recover()
		if v != nil && v != http.ErrAbortHandler { //nolint:errorlint // the sentinel is compared as net/http does
			x.g.logger.Error("panic serving mimi request", zap.String("endpoint", x.rt.name),
				zap.Any("panic", v), zap.ByteString("stack", debug.Stack()))
		}
	}()
	x.rt.serve(x.g, x)
	return nil
}
