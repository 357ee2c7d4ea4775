package caddymodule

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/policy/admission"
)

// registerMetrics registers the admission policy's collectors on reg. The
// collectors are package-level in admission, so their values survive
// reloads; a registration by another handler of the same config is fine.
func registerMetrics(reg *prometheus.Registry, logger *zap.Logger) {
	if reg == nil {
		return
	}
	for _, c := range admission.Collectors() {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				logger.Warn("registering policy metrics", zap.Error(err))
			}
		}
	}
}
