package caddymodule

import (
	"os"
	"regexp"
	"strconv"
	"strings"
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

// TestEndpointTableMatchesDocs requires docs/protocol.md's endpoint table
// to list exactly the endpoint table, row for row: path, methods, body,
// request types, authentication and policy name.
func TestEndpointTableMatchesDocs(t *testing.T) {
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	const header = "| path | methods | body | request types | authentication | policy name |"
	start := strings.Index(string(doc), header)
	if start < 0 {
		t.Fatalf("docs/protocol.md has no endpoint table headed %q", header)
	}
	documented := map[string][]string{}
	for _, line := range strings.Split(string(doc[start:]), "\n")[2:] {
		if !strings.HasPrefix(line, "|") {
			break
		}
		var cells []string
		for _, c := range strings.Split(strings.Trim(line, "|"), "|") {
			cells = append(cells, strings.TrimSpace(c))
		}
		if len(cells) != 6 {
			t.Fatalf("endpoint table row %q has %d cells, want 6", line, len(cells))
		}
		documented[strings.Trim(cells[0], "`")] = cells[1:]
	}
	for _, ep := range endpointTable {
		t.Run(ep.name, func(t *testing.T) {
			row, ok := documented[ep.path]
			if !ok {
				t.Fatalf("%s is not in docs/protocol.md's endpoint table", ep.path)
			}
			delete(documented, ep.path)
			types := "-"
			switch ep.auth {
			case authClient:
				names := make([]string, len(ep.dsTypes))
				for i, typ := range ep.dsTypes {
					names[i] = typ.String()
				}
				types = strings.Join(names, ", ")
			case authProvider:
				types = ep.providerType.String()
			}
			want := []string{ep.allow(), ep.body.String(), types, ep.auth.String(), ep.name}
			for i, col := range []string{"methods", "body", "request types", "authentication", "policy name"} {
				if got := strings.Trim(row[i], "`"); got != want[i] {
					t.Errorf("%s: docs say %q, the code %q", col, got, want[i])
				}
			}
		})
	}
	for path := range documented {
		t.Errorf("docs/protocol.md lists %s, which the endpoint table does not have", path)
	}
}

// TestReadmeErrorTableMatchesCodes requires the README's error table
// (section "Errors") to list every code of the registry, each once, in the
// row of the HTTP status statusOf sends: an operator or client author reads
// the statuses there.
func TestReadmeErrorTableMatchesCodes(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const header = "| status | codes |"
	start := strings.Index(string(readme), header)
	if start < 0 {
		t.Fatalf("README.md has no error table headed %q", header)
	}
	listed := map[moh.Code]int{}
	for _, line := range strings.Split(string(readme[start:]), "\n")[2:] {
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) != 2 {
			t.Fatalf("error table row %q has %d cells, want 2", line, len(cells))
		}
		status, err := strconv.Atoi(strings.TrimSpace(cells[0]))
		if err != nil {
			t.Fatalf("error table row %q: status: %v", line, err)
		}
		for _, m := range regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(cells[1], -1) {
			c := codeNamed(m[1])
			if c == 0 {
				t.Errorf("README lists `%s` under %d, which is no code", m[1], status)
				continue
			}
			listed[c]++
			if statusOf(c) != status {
				t.Errorf("README lists %s under %d, statusOf says %d", c, status, statusOf(c))
			}
		}
	}
	for c := moh.Code(1); c.Known(); c++ {
		t.Run(c.String(), func(t *testing.T) {
			if listed[c] != 1 {
				t.Errorf("README's error table lists %s %d times, want once (under %d)", c, listed[c], statusOf(c))
			}
		})
	}
}

// codeNamed returns the registered code called name, or 0.
func codeNamed(name string) moh.Code {
	for c := moh.Code(1); c.Known(); c++ {
		if c.String() == name {
			return c
		}
	}
	return 0
}
