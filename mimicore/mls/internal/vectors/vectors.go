// Package vectors locates the MLS interoperability test vectors for tests.
//
// The vectors live in testdata/mls at the repository root (see package
// internal/testdata and testdata/README.md).
package vectors

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/internal/testdir"
)

// Dir returns the directory holding the MLS test vectors, testdata/mls.
func Dir() (string, error) {
	return testdir.Path("mls")
}

// Load decodes the JSON file name (relative to Dir) into v.
func Load(name string, v any) error {
	dir, err := Dir()
	if err != nil {
		return err
	}
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return fmt.Errorf("reading test vectors: %w", err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decoding test vectors %s: %w", name, err)
	}
	return nil
}

// Hex is a byte string written in JSON as lowercase hex. JSON null decodes
// to nil.
type Hex []byte

// UnmarshalJSON implements json.Unmarshaler.
func (h *Hex) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		*h = nil
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return fmt.Errorf("decoding hex: %w", err)
	}
	*h = b
	return nil
}

// Counter tallies the cases a vector test ran and skipped.
type Counter struct {
	Run, Skipped int
}

// Report logs the tally through t and prints it on stdout, so the counts
// show in `go test -v` output and in a plain `go test` run of the package
// directory.
func (c *Counter) Report(t testing.TB, file string) {
	t.Helper()
	line := fmt.Sprintf("mls vectors %s: %d cases run, %d skipped (unsupported suites 4/6)", file, c.Run, c.Skipped)
	t.Log(line)
	fmt.Println(line)
}
