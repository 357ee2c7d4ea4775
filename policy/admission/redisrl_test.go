package admission

import (
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit/redisrl"
)

// The Redis zones of these tests make their clients with redisrl, as in a
// build with the cluster package.
func init() { ratelimit.RegisterRedis(redisrl.New) }
