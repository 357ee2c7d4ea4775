package integration

import (
	"bytes"
	"crypto/rand"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/cmd/mimictl/cli"
)

// TestMimictlAttach uploads a file with `mimictl attach put` from one
// client and fetches it with `attach get` on the other, over the real
// gateway: encrypted on one side, decrypted with keys derived on the other.
func TestMimictlAttach(t *testing.T) {
	startClientSite(t)
	dir := t.TempDir()
	run := func(state string, stdin []byte, args ...string) (string, string, int) {
		t.Helper()
		environ := map[string]string{"MIMI_GATEWAY": "https://m.localhost:9443", "MIMI_USER": "carol",
			"MIMI_PASSWORD": clientUsers["carol"], "MIMI_STATE": filepath.Join(dir, state)}
		var stdout, stderr bytes.Buffer
		status := cli.Run(t.Context(), args, cli.Env{Stdin: bytes.NewReader(stdin), Stdout: &stdout, Stderr: &stderr,
			Getenv: func(k string) string { return environ[k] }, HTTPClient: clientHTTP()})
		return stdout.String(), stderr.String(), status
	}
	must := func(state string, stdin []byte, args ...string) string {
		t.Helper()
		out, errOut, status := run(state, stdin, args...)
		if status != 0 {
			t.Fatalf("mimictl %v (%s): exit %d: %s", args, state, status, errOut)
		}
		return out
	}
	must("phone", nil, "client", "init", "-key-packages", "1", "mimi://m.localhost/d/carol/phone")
	must("laptop", nil, "client", "init", "mimi://m.localhost/d/carol/laptop")
	gid := strings.TrimSpace(must("phone", nil, "group", "create"))
	info := must("phone", nil, "group", "export", gid, "-")
	must("laptop", []byte(info), "group", "join", "-")
	must("phone", nil, "recv", "-wait", "5s") // the join's commit: both in epoch 1

	file := make([]byte, 300<<10)
	rand.Read(file)
	out := must("phone", file, "attach", "put", gid, "-")
	leaf, ref, ok := strings.Cut(strings.TrimSpace(out), "\t")
	if !ok || leaf != "0" || !strings.HasPrefix(ref, "message/external-body; access-type=token; token=") {
		t.Fatalf("attach put printed %q", out)
	}
	if got := must("laptop", nil, "attach", "get", gid, leaf, ref, "-"); got != string(file) {
		t.Fatalf("attach get returned %d bytes, not the %d uploaded", len(got), len(file))
	}
	// The wrong sender's keys do not open it.
	if _, errOut, status := run("laptop", nil, "attach", "get", gid, "1", ref, "-"); status != 1 || errOut == "" {
		t.Fatalf("attach get with the wrong sender: exit %d, %q", status, errOut)
	}
	// A client outside the group gets not_found.
	must("other", nil, "client", "init", "mimi://m.localhost/d/carol/tablet")
	if _, errOut, status := run("other", nil, "attach", "get", gid, leaf, ref, "-"); status != 1 || !strings.Contains(errOut, "not") {
		t.Fatalf("attach get outside the group: exit %d, %q", status, errOut)
	}
}
