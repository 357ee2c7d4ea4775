// Package testdir locates the repository's testdata/ directory for tests:
// the MLS and Privacy Pass vectors and the pp-peer (see testdata/README.md).
//
// The directory is found from the module root, the directory whose go.mod
// declares this module. Tests run in their package directory, so walking up
// from the working directory finds it; when the working directory lies
// outside the module (a test binary run from elsewhere), the location of
// this source file is used instead. (The package is not named testdata: the
// go tool leaves directories of that name out of ./... patterns.)
package testdir

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
)

// modulePath is the module whose root holds testdata/.
const modulePath = "github.com/caddy-mimi/caddy-mimi"

// Dir returns the absolute path of <module root>/testdata.
func Dir() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	// Without -trimpath the compiler records this file's absolute path.
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, start := range starts {
		root, ok := moduleRoot(start)
		if !ok {
			continue
		}
		dir := filepath.Join(root, "testdata")
		st, err := os.Stat(dir)
		if err != nil {
			return "", fmt.Errorf("locating testdata: %w", err)
		}
		if !st.IsDir() {
			return "", fmt.Errorf("locating testdata: %s is not a directory", dir)
		}
		return dir, nil
	}
	return "", errors.New("locating testdata: no go.mod of module " + modulePath + " above the working directory")
}

// Path returns the path of elem inside the testdata directory.
func Path(elem ...string) (string, error) {
	dir, err := Dir()
	if err != nil {
		return "", err
	}
	return filepath.Join(append([]string{dir}, elem...)...), nil
}

// moduleRoot walks up from start to the first directory whose go.mod
// declares modulePath. A go.mod of another module (a nested example, say)
// does not stop the walk.
func moduleRoot(start string) (string, bool) {
	for d := filepath.Clean(start); ; {
		if declaresModule(filepath.Join(d, "go.mod")) {
			return d, true
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", false
		}
		d = parent
	}
}

// declaresModule reports whether the go.mod at path declares modulePath.
func declaresModule(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for line := range bytes.Lines(data) {
		fields := bytes.Fields(line)
		if len(fields) >= 2 && string(fields[0]) == "module" {
			return string(bytes.Trim(fields[1], `"`)) == modulePath
		}
	}
	return false
}
