package caddymodule

import (
	"context"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/federation"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
)

// senderPool holds one federation sender per data directory, beside the
// service of servicePool: one process drains a provider's outbox across
// handler instances and config reloads. The sender signs with the
// service's key ring and reaches peers through the service's current key
// fetcher, so a reload that changes the federation options takes effect
// for it too. It stops when the last gateway config using it is cleaned
// up, before the service's store closes.
var senderPool = caddy.NewUsagePool()

// runningSender is a sender and the goroutine that runs it.
type runningSender struct {
	sender *federation.Sender
	cancel context.CancelFunc
	done   chan struct{}
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
func (g *Gateway) startSender(svc *service.Service) (*federation.Sender, error) {
	v, _, err := senderPool.LoadOrNew(g.DataDir, func() (caddy.Destructor, error) {
		s := &federation.Sender{
			Outbox:    svc.Store(),
			Transport: federation.Clients{Keys: svc.Keys(), Fetcher: svc.Fetcher},
			Logger:    sampled(g.logger.Named("federation")),
		}
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
