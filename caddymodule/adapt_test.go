package caddymodule

import (
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// TestAdaptExample pins the JSON that Caddyfile.example adapts to, so a
// change to the directive's parsing shows up as a diff of the operator's
// view. Regenerate with: ./caddy adapt --config Caddyfile.example --pretty
func TestAdaptExample(t *testing.T) {
	in, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/Caddyfile.example.json")
	if err != nil {
		t.Fatal(err)
	}
	if !caddytest.CompareAdapt(t, "Caddyfile.example", string(in), "caddyfile", strings.TrimSpace(string(want))) {
		t.Fatal("Caddyfile.example adapts to different JSON")
	}
}
