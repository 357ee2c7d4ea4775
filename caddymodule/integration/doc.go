// Package integration holds the tests that run caddy-mimi inside a real,
// in-process Caddy (caddytest) and talk TLS 1.3 HTTP/2 to it. They share
// Caddy's ports (admin 2999, HTTPS 9443), so they all live in this one
// package.
//
// By default the gateways keep their state in SQLite and their attachments
// in local files. With MIMI_INTEGRATION_BACKEND=postgres (which .ci/run
// runs too) the same tests run on the cluster backends instead: each
// provider on a PostgreSQL database of its own (store postgres, its keys
// sealed under key_secret) and an S3 bucket of its own (attachments
// storage s3), on a throwaway PostgreSQL cluster and versitygw that the
// test binary starts on loopback; backend_test.go has the details.
package integration
