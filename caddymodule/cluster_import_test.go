package caddymodule

// The tests configure the cluster backends (store postgres, redis zones,
// attachments storage s3): they run with them registered, as in a build
// with the cluster package, which does not import this one.
import _ "github.com/caddy-mimi/caddy-mimi/caddymodule/cluster"
