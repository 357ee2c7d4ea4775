package caddymodule

import (
	"os"
	"regexp"
	"strconv"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// TestErrorCodeTableMatchesDocs requires docs/protocol.md's error code
// table to list exactly the registry, with the status statusOf sends.
func TestErrorCodeTableMatchesDocs(t *testing.T) {
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := regexp.MustCompile("(?m)^\\| (\\d+) \\| `([a-z_]+)` \\| (\\d{3}) \\|").FindAllSubmatch(doc, -1)
	documented := map[moh.Code]bool{}
	for _, r := range rows {
		n, _ := strconv.Atoi(string(r[1]))
		status, _ := strconv.Atoi(string(r[3]))
		c := moh.Code(n)
		if c.String() != string(r[2]) {
			t.Errorf("docs: code %d is %q, code says %q", n, r[2], c.String())
		}
		if statusOf(c) != status {
			t.Errorf("docs: %s is HTTP %d, statusOf says %d", c, status, statusOf(c))
		}
		documented[c] = true
	}
	for c := moh.Code(1); c.Known(); c++ {
		if !documented[c] {
			t.Errorf("code %d (%s) is not in docs/protocol.md", c, c)
		}
	}
}
