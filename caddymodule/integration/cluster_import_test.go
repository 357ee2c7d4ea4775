package integration

// MIMI_INTEGRATION_BACKEND=postgres runs the gateways on PostgreSQL and S3:
// the suite links the cluster backends, as a build with the cluster
// package does.
import _ "github.com/caddy-mimi/caddy-mimi/caddymodule/cluster"
