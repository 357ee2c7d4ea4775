package cli

import (
	"bytes"
	"strings"
	"testing"
)

// TestExitStatus checks the exit status and stderr of command lines that
// fail before any request: usage errors are 2, failures 1, -h 0.
func TestExitStatus(t *testing.T) {
	state := t.TempDir()
	env := map[string]string{"MIMI_GATEWAY": "https://gateway.invalid", "MIMI_STATE": state}
	for _, tc := range []struct {
		name   string
		args   []string
		env    map[string]string
		status int
		stderr string
	}{
		{"help", []string{"-h"}, env, exitOK, "usage: mimictl"},
		{"a command's help", []string{"recv", "-h"}, map[string]string{}, exitOK, "-wait"},
		{"a subcommand's help", []string{"client", "init", "-h"}, map[string]string{}, exitOK, "-key-packages"},
		{"no command", nil, env, exitUsage, "no command"},
		{"no gateway", []string{"group", "list"}, map[string]string{"MIMI_STATE": state}, exitUsage, "-gateway and -state are required"},
		{"no state", []string{"-gateway", "https://g.invalid", "group", "list"}, map[string]string{}, exitUsage, "-gateway and -state are required"},
		{"unknown command", []string{"frobnicate"}, env, exitUsage, `unknown command "frobnicate"`},
		{"unknown subcommand", []string{"group", "frobnicate"}, env, exitUsage, `unknown command "group frobnicate"`},
		{"group without subcommand", []string{"group"}, env, exitUsage, "group needs a subcommand"},
		{"too few arguments", []string{"group", "info"}, env, exitUsage, "group info takes 1 argument(s)"},
		{"add without URI", []string{"group", "add", "00"}, env, exitUsage, "needs a group and at least one URI"},
		{"attach put without file", []string{"attach", "put", "00"}, env, exitUsage, "attach put takes 2 argument(s)"},
		{"attach copy without target group", []string{"attach", "copy", "00", "0", "ref"}, env, exitUsage, "attach copy takes 4 argument(s)"},
		{"attach without subcommand", []string{"attach"}, env, exitUsage, "attach needs a subcommand"},
		{"init without URI", []string{"client", "init"}, env, exitUsage, "client init needs one client URI"},
		{"bad flag", []string{"recv", "-wait", "soon"}, env, exitUsage, "recv:"},
		{"missing CA file", []string{"-ca", state + "/none.pem", "group", "list"}, env, exitFailure, "reading the CA file"},
		{"no client state", []string{"group", "list"}, env, exitFailure, "no client state in"},
		{"bad client URI", []string{"client", "init", "alice"}, env, exitFailure, "initialising client"},
		{"password file without user", []string{"-password-file", state + "/pw", "group", "list"}, env, exitUsage, "-password-file and MIMI_PASSWORD need -user"},
		{"MIMI_PASSWORD without user", []string{"group", "list"}, map[string]string{"MIMI_GATEWAY": "https://gateway.invalid", "MIMI_STATE": state,
			"MIMI_PASSWORD": "secret"}, exitUsage, "-password-file and MIMI_PASSWORD need -user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			got := Run(t.Context(), tc.args, Env{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr,
				Getenv: func(k string) string { return tc.env[k] }})
			if got != tc.status || !strings.Contains(stderr.String(), tc.stderr) {
				t.Fatalf("status %d, stderr %q; want %d and %q", got, stderr.String(), tc.status, tc.stderr)
			}
			if tc.status != exitOK && stdout.Len() != 0 {
				t.Fatalf("a failure printed on stdout: %q", stdout.String())
			}
		})
	}
}

func TestPrintable(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"hello bob", "hello bob"},
		{"grüße", "grüße"},
		{"two\nlines", `"two\nlines"`},
		{"tab\there", `"tab\there"`},
		{"\xff", `"\xff"`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := printable([]byte(tc.in)); got != tc.want {
				t.Fatalf("printable(%q) = %s, want %s", tc.in, got, tc.want)
			}
		})
	}
}
