package ds

import (
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// TestAcceptedAuthMatchesDocs requires the "accepted auth_type" column of
// the request type table of docs/protocol.md §5.3 to name exactly the
// DSAuthData variants checkAuthType lets through for each type that
// clients may send: a peer signs its requests as that column says.
func TestAcceptedAuthMatchesDocs(t *testing.T) {
	raw, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	const header = "| type | name | body | limits | accepted `auth_type` | endpoint |"
	_, table, ok := strings.Cut(string(raw), header+"\n")
	if !ok {
		t.Fatalf("docs/protocol.md has no table headed %q", header)
	}
	table, _, _ = strings.Cut(table, "\n\n")
	variants := []struct {
		name string
		typ  moh.AuthType
	}{{"anonymous", moh.AuthAnonymous}, {"client_signature", moh.AuthClientSignature},
		{"key_package_signature", moh.AuthKeyPackageSignature}}
	seen := 0
	for _, line := range strings.Split(table, "\n")[1:] {
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		if len(cells) != 6 {
			t.Fatalf("row does not parse: %s", line)
		}
		var types []moh.RequestType
		for _, part := range strings.Split(strings.TrimSpace(cells[0]), ", ") {
			lo, hi, isRange := strings.Cut(part, "-")
			a, _ := strconv.Atoi(lo)
			b := a
			if isRange {
				b, _ = strconv.Atoi(hi)
			}
			for n := a; n <= b; n++ {
				types = append(types, moh.RequestType(n))
			}
		}
		var documented []moh.AuthType
		for _, v := range variants {
			if regexp.MustCompile(`\b` + v.name + `\b`).MatchString(cells[4]) {
				documented = append(documented, v.typ)
			}
		}
		for _, typ := range types {
			if typ.ProviderOnly() {
				continue // refused before authentication, on every endpoint
			}
			seen++
			t.Run(typ.String(), func(t *testing.T) {
				for _, v := range variants {
					err := checkAuthType(&moh.RequestBody{Type: typ}, &moh.AuthData{Type: v.typ})
					if want := slices.Contains(documented, v.typ); (err == nil) != want {
						t.Errorf("%s with %s: the document accepts it: %v, the code: %v", typ, v.name, want, err)
					}
				}
			})
		}
	}
	if seen == 0 {
		t.Fatal("no row checked")
	}
}
