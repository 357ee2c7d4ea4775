// Package commitbench measures /group_operation commits through a real
// Caddy over TLS 1.3 and HTTP/2 (issue 9: commit latency at 100, 1,000 and
// 10,000 members), next to a bare respond route on the same site. It has
// no code of its own: the benchmark is in commit_test.go, run with
//
//	go test ./examples/loadtest/commitbench -run '^$' -bench . -benchtime 200x
//
// See examples/loadtest/README.md for what it measures and the results.
package commitbench
