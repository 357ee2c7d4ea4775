// Package shared locates the project's reference shelf for tests: the
// shared/ directory beside the repository, which holds the test vectors and
// the independent peers. CI clones the repository with shared/ beside it.
package shared

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Dir returns the shared/ directory: $MIMI_SHARED_DIR when set, else the
// first shared/ holding testvectors/ found walking up from the working
// directory.
func Dir() (string, error) {
	if d := os.Getenv("MIMI_SHARED_DIR"); d != "" {
		return d, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("locating shared/: %w", err)
	}
	for d := wd; ; {
		cand := filepath.Join(d, "shared")
		if st, err := os.Stat(filepath.Join(cand, "testvectors")); err == nil && st.IsDir() {
			return cand, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("locating shared/: not found above the working directory; set MIMI_SHARED_DIR")
		}
		d = parent
	}
}

// Path returns the path of elem inside the shared/ directory.
func Path(elem ...string) (string, error) {
	d, err := Dir()
	if err != nil {
		return "", err
	}
	return filepath.Join(append([]string{d}, elem...)...), nil
}
