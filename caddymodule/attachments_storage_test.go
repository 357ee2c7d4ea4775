package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/internal/s3test"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/forward/forwardtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/storagetest"
)

// storageHost loads a storage module the way the attachments block's
// storage field does.
type storageHost struct {
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=http.mimi.attachments inline_key=backend"`
}

// adaptStorage parses "storage <name> {...}" as the attachments block
// does and returns the module's JSON.
func adaptStorage(input string) (json.RawMessage, error) {
	d := caddyfile.NewTestDispenser(input)
	d.Next() // storage
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	name := d.Val()
	unm, err := caddyfile.UnmarshalModule(d, "http.mimi.attachments."+name)
	if err != nil {
		return nil, err
	}
	if _, ok := unm.(storage.Backend); !ok {
		return nil, d.Errf("module %s is not an attachment storage", name)
	}
	return caddyconfig.JSONModuleObject(unm, "backend", name, nil), nil
}

// loadStorage provisions the module of raw under a bare Caddy context and
// cleans it up when t ends.
func loadStorage(t *testing.T, raw json.RawMessage) storage.Backend {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel) // runs every loaded module's Cleanup
	h := &storageHost{StorageRaw: raw}
	mod, err := ctx.LoadModule(h, "StorageRaw")
	if err != nil {
		t.Fatal(err)
	}
	b, ok := mod.(storage.Backend)
	if !ok {
		t.Fatalf("loaded %T, not a storage.Backend", mod)
	}
	return b
}

// TestAttachmentStorageAdapt pins the JSON each storage module's
// Caddyfile adapts to.
func TestAttachmentStorageAdapt(t *testing.T) {
	for _, tc := range []struct{ name, input, want string }{
		{"s3", `storage s3 {
			endpoint s3.eu-west-1.amazonaws.com
			bucket mimi-attachments
			prefix gw1/
			region eu-west-1
			access_key {env.S3_KEY}
			secret_key {file./run/secrets/s3}
			path_style
			part_size 16MiB
		}`, `{"backend":"s3","endpoint":"s3.eu-west-1.amazonaws.com","bucket":"mimi-attachments","prefix":"gw1/","region":"eu-west-1","access_key":"{env.S3_KEY}","secret_key":"{file./run/secrets/s3}","path_style":true,"part_size":16777216}`},
		{"s3 minimal", `storage s3 {
			endpoint 127.0.0.1:9000
			bucket b
			insecure
		}`, `{"backend":"s3","endpoint":"127.0.0.1:9000","bucket":"b","insecure":true}`},
		{"forward", `storage forward https://legacy.example/mimi/attachments/ {
			key {env.MIMI_ATTACHMENTS_KEY}
			timeout 1m
		}`, `{"backend":"forward","base_url":"https://legacy.example/mimi/attachments/","key":"{env.MIMI_ATTACHMENTS_KEY}","timeout":60000000000}`},
		{"forward key file", `storage forward https://legacy.example/att/ {
			key_file /etc/caddy-mimi/attachments.key
		}`, `{"backend":"forward","base_url":"https://legacy.example/att/","key_file":"/etc/caddy-mimi/attachments.key"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := adaptStorage(tc.input)
			if err != nil {
				t.Fatal(err)
			}
			var gotV, wantV any
			if err := json.Unmarshal(got, &gotV); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(tc.want), &wantV); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(gotV, wantV) {
				t.Fatalf("adapted to\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestAttachmentStorageCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct{ name, input, want string }{
		{"s3 argument", "storage s3 x {\n endpoint e\n bucket b\n}", "wrong argument count"},
		{"s3 no bucket", "storage s3 {\n endpoint e\n}", "needs endpoint and bucket"},
		{"s3 no endpoint", "storage s3 {\n bucket b\n}", "needs endpoint and bucket"},
		{"s3 duplicate", "storage s3 {\n endpoint e\n endpoint f\n bucket b\n}", "duplicate s3 option 'endpoint'"},
		{"s3 key alone", "storage s3 {\n endpoint e\n bucket b\n access_key k\n}", "both access_key and secret_key"},
		{"s3 small part", "storage s3 {\n endpoint e\n bucket b\n part_size 1MiB\n}", "invalid part_size '1MiB'"},
		{"s3 bad part", "storage s3 {\n endpoint e\n bucket b\n part_size lots\n}", "invalid part_size 'lots'"},
		{"s3 flag with value", "storage s3 {\n endpoint e\n bucket b\n insecure yes\n}", "wrong argument count"},
		{"s3 unknown", "storage s3 {\n endpoint e\n bucket b\n acl public\n}", "unrecognized s3 option 'acl'"},
		{"forward no key", "storage forward https://l.example/a/", "exactly one of key and key_file"},
		{"forward two keys", "storage forward https://l.example/a/ {\n key k\n key_file f\n}", "exactly one of key and key_file"},
		{"forward no URL", "storage forward {\n key k\n}", "wrong argument count"},
		{"forward two URLs", "storage forward https://l.example/a/ https://l.example/b/ {\n key k\n}", "wrong argument count"},
		{"forward duplicate", "storage forward https://l.example/a/ {\n key k\n key l\n}", "duplicate forward option 'key'"},
		{"forward bad timeout", "storage forward https://l.example/a/ {\n key k\n timeout soon\n}", "invalid timeout duration 'soon'"},
		{"forward unknown", "storage forward https://l.example/a/ {\n key k\n bearer x\n}", "unrecognized forward option 'bearer'"},
		{"unknown backend", "storage ftp {\n}", "http.mimi.attachments.ftp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := adaptStorage(tc.input)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestAttachmentStorageProvisionErrors checks what Provision refuses, and
// that a secret's placeholder, not its value, is named.
func TestAttachmentStorageProvisionErrors(t *testing.T) {
	t.Setenv("MIMI_TEST_SHORT_KEY", "tooshort-and-secret")
	for _, tc := range []struct{ name, raw, want string }{
		{"s3 scheme", `{"backend":"s3","endpoint":"https://s3.example","bucket":"b"}`, "endpoint"},
		{"s3 unknown placeholder", `{"backend":"s3","endpoint":"e","bucket":"b","access_key":"k","secret_key":"{nope}"}`, "secret_key"},
		{"s3 unknown field", `{"backend":"s3","endpoint":"e","bucket":"b","acl":"x"}`, "acl"},
		{"forward short key", `{"backend":"forward","base_url":"https://l.example/a/","key":" {env.MIMI_TEST_SHORT_KEY}\n"}`, "at least 32"},
		{"forward no key", `{"backend":"forward","base_url":"https://l.example/a/"}`, "exactly one of key and key_file"},
		{"forward missing key file", `{"backend":"forward","base_url":"https://l.example/a/","key_file":"/nonexistent/mimi.key"}`, "key_file"},
		{"forward no slash", `{"backend":"forward","base_url":"https://l.example/a","key":"0123456789abcdef0123456789abcdef"}`, "ending in '/'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			_, err := ctx.LoadModule(&storageHost{StorageRaw: json.RawMessage(tc.raw)}, "StorageRaw")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "tooshort-and-secret") {
				t.Fatalf("the error quotes the secret: %v", err)
			}
		})
	}
}

// roundTrip stores and reads back one object through b.
func roundTrip(t *testing.T, b storage.Backend) {
	t.Helper()
	name, data := storagetest.Name(t), bytes.Repeat([]byte("ciphertext"), 1000)
	w, err := b.Create(context.Background(), name, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if err := w.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	o, err := b.Open(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if got, err := io.ReadAll(o); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes (%v) that differ", len(got), err)
	}
	if err := b.Delete(context.Background(), name); err != nil {
		t.Fatal(err)
	}
}

// TestAttachmentStorageS3Module adapts a Caddyfile with placeholders for
// the keys, loads the module and stores an object in versitygw with it.
func TestAttachmentStorageS3Module(t *testing.T) {
	srv := s3test.Start(t)
	t.Setenv("MIMI_TEST_S3_KEY", srv.AccessKey)
	t.Setenv("MIMI_TEST_S3_SECRET", srv.SecretKey)
	raw, err := adaptStorage(`storage s3 {
		endpoint ` + srv.Endpoint + `
		bucket ` + srv.Bucket + `
		prefix caddymodule/
		region ` + srv.Region + `
		access_key {env.MIMI_TEST_S3_KEY}
		secret_key {env.MIMI_TEST_S3_SECRET}
		insecure
		path_style
	}`)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, loadStorage(t, raw))
}

// TestAttachmentStorageForwardModule adapts Caddyfiles with the key as a
// placeholder and in a file (with white space around it), loads the
// module and stores an object on the reference legacy backend with it.
func TestAttachmentStorageForwardModule(t *testing.T) {
	const key = "0123456789abcdef0123456789abcdef"
	srv := httptest.NewServer(&forwardtest.Backend{Dir: t.TempDir(), Key: []byte(key)})
	defer srv.Close()
	t.Setenv("MIMI_TEST_FORWARD_KEY", key)
	keyFile := filepath.Join(t.TempDir(), "attachments.key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, opt := range map[string]string{"key": "key {env.MIMI_TEST_FORWARD_KEY}", "key_file": "key_file " + keyFile} {
		t.Run(name, func(t *testing.T) {
			raw, err := adaptStorage(`storage forward ` + srv.URL + forwardtest.Base + ` {
				` + opt + `
				timeout 10s
			}`)
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, loadStorage(t, raw))
		})
	}
}

// TestAttachmentStorageNamedWithPostgres checks that Validate, before the
// database is opened, refuses to give gateways on one PostgreSQL database
// local files of each gateway's own (the default storage, or storage local
// without a root), which the others would neither serve nor delete, and
// that its error names the Caddyfile's way to switch attachments off.
func TestAttachmentStorageNamedWithPostgres(t *testing.T) {
	const refused = "with store postgres, name the storage"
	for _, tc := range []struct {
		name    string
		att     *Attachments
		wantErr string
	}{
		{"no attachments block", nil, refused},
		{"a block without storage", &Attachments{MaxSize: 1 << 20}, refused},
		{"local without a root", &Attachments{Storage: json.RawMessage(`{"backend":"local"}`)}, refused},
		{"local with a root", &Attachments{Storage: json.RawMessage(`{"backend":"local","root":"/mnt/mimi"}`)}, ""},
		{"forward", &Attachments{Storage: json.RawMessage(`{"backend":"forward","base_url":"https://l.example/a/","key_file":"/k"}`)}, ""},
		{"disabled", &Attachments{Disabled: true}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com",
				Store:     &StoreConfig{Backend: storePostgres, DSN: "{env.MIMI_PG_DSN}"},
				KeySecret: "{env.MIMI_KEY_SECRET}", Attachments: tc.att}
			err := g.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to say %q", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), "`attachments off`") {
				t.Fatalf("err = %v, want it to name the Caddyfile option `attachments off`", err)
			}
		})
	}
}

// TestAttachmentStorageWithPostgresLoads loads a gateway on PostgreSQL
// with a storage local with a root the way Caddy loads a handler:
// LoadModuleByID provisions it, which loads the storage module (Caddy
// then clears the module's raw JSON), and validates it after. The
// validation must still see the storage the operator named.
func TestAttachmentStorageWithPostgresLoads(t *testing.T) {
	t.Setenv("MIMI_TEST_KEY_SECRET", strings.Repeat("ab", 32))
	g := pgGateway(t, pgtest.NewDB(t), "")
	g.Attachments = &Attachments{Storage: caddyconfig.JSONModuleObject(&LocalStorage{Root: t.TempDir()}, "backend", "local", nil)}
	raw, err := json.Marshal(g)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	mod, err := ctx.LoadModuleByID("http.handlers.mimi", raw)
	if err != nil {
		t.Fatalf("loading a gateway on PostgreSQL with storage local and a root: %v", err)
	}
	if err := mod.(*Gateway).Cleanup(); err != nil {
		t.Error(err)
	}
}
