// Package integration holds the tests that run caddy-mimi inside a real,
// in-process Caddy (caddytest) and talk TLS 1.3 HTTP/2 to it. They share
// Caddy's ports (admin 2999, HTTPS 9443), so they all live in this one
// package.
package integration
