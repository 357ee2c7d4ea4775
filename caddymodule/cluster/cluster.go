// Package cluster adds to a caddy-mimi build the backends that only a
// cluster of gateways needs, with the client libraries they link:
//
//   - the PostgreSQL store (store postgres, package pgstore, on pgx),
//     registered with service.RegisterStore;
//   - Redis rate-limit zones (zone ... redis, package redisrl, on
//     go-redis), registered with ratelimit.RegisterRedis;
//   - the S3 attachment storage (attachments storage s3, the Caddy module
//     http.mimi.attachments.s3, S3Storage, on minio-go), registered with
//     caddy.RegisterModule.
//
// The default build (Caddy's standard modules and package caddymodule, as
// cmd/caddy and a plain xcaddy build --with caddymodule have it) links none
// of them, which keeps an embedded gateway's binary and memory smaller; a
// configuration naming one of them then fails with an error that names this
// package. A blank import adds all three:
//
//	xcaddy build --with github.com/caddy-mimi/caddy-mimi/caddymodule --with github.com/caddy-mimi/caddy-mimi/caddymodule/cluster
//
// or, in this repository, CLUSTER=1 ./xcaddy.sh, which builds
// cmd/caddy-cluster when xcaddy is not available.
//
// The package does not import caddymodule: it only registers, so the tests of
// caddymodule import it to run the cluster backends.
package cluster

import (
	"context"

	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/pgstore"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit/redisrl"
)

func init() {
	service.RegisterStore(service.PostgresStore, openPostgres)
	ratelimit.RegisterRedis(redisrl.New)
}

// openPostgres opens the PostgreSQL store that o names.
func openPostgres(ctx context.Context, o service.StoreOptions) (store.Store, error) {
	return pgstore.Open(ctx, o.Postgres, pgstore.Options{MaxConns: o.MaxConns})
}
