package testdir

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDirHoldsTheVectors(t *testing.T) {
	for _, elem := range [][]string{
		{"README.md"},
		{"mls", "messages.json"},
		{"privacypass", "rfc9578-type2-blindrsa.json"},
		{"peers", "privacypass", "package.json"},
	} {
		path, err := Path(elem...)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(path); err != nil {
			t.Errorf("testdata lacks %s: %v", filepath.Join(elem...), err)
		}
	}
}

func TestDirFromOutsideTheModule(t *testing.T) {
	want, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	got, err := Dir()
	if err != nil {
		t.Skipf("no source path recorded (built with -trimpath?): %v", err)
	}
	if got != want {
		t.Fatalf("Dir() = %s from outside the module, want %s", got, want)
	}
}

func TestModuleRootSkipsOtherModules(t *testing.T) {
	root := t.TempDir()
	nested := filepath.Join(root, "examples", "client")
	if err := os.MkdirAll(nested, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(path, text string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "go.mod"), "// the module\nmodule \""+modulePath+"\" // quoted\n\ngo 1.26.0\n")
	write(filepath.Join(nested, "go.mod"), "module example.com/client\n")

	got, ok := moduleRoot(nested)
	if !ok || got != root {
		t.Fatalf("moduleRoot(%s) = %q, %v; want %s", nested, got, ok, root)
	}
	if _, ok := moduleRoot(t.TempDir()); ok {
		t.Fatal("moduleRoot found a module in an empty temporary directory")
	}
}
