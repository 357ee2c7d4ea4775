package cluster

import (
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/caddymodule/internal/caddyopts"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/s3store"
)

func init() {
	caddy.RegisterModule(S3Storage{})
}

// S3Storage, the Caddy module http.mimi.attachments.s3 (attachments
// storage s3), keeps attachment ciphertexts in an S3-compatible object store
// (AWS S3, MinIO, Ceph, Garage, versitygw, R2, B2...). After Provision it
// is a storage.Backend. An upload of up to 1 MiB is held in memory and sent
// as one PUT on commit, while such buffers hold less than 64 MiB in the
// process; any other is a multipart upload whose parts of part_size are
// streamed from the client's body into their requests, without a part
// buffer, and completed only on commit. So nothing is visible before an
// upload is complete, and a failed or aborted upload leaves no bytes (a
// part request that fails fails the upload: its bytes are not kept to
// send again); the sweeper aborts the incomplete multipart uploads of
// crashed processes under prefix.
//
// It holds no exclusive resource (an HTTP client), so the configs on both
// sides of a reload each have their own, without a UsagePool.
type S3Storage struct {
	// Endpoint is the store's host[:port], without a scheme. Required.
	Endpoint string `json:"endpoint,omitempty"`
	// Bucket holds the objects; it must exist. Required.
	Bucket string `json:"bucket,omitempty"`
	// Prefix goes in front of every object name (e.g. "mimi/"); empty
	// puts them at the bucket's root.
	Prefix string `json:"prefix,omitempty"`
	// Region of the bucket; empty asks the store.
	Region string `json:"region,omitempty"`
	// AccessKey and SecretKey sign the requests; give them as
	// placeholders ({env.S3_SECRET}, {file./run/secrets/s3}), which are
	// resolved in Provision and never logged. Both empty sends anonymous
	// requests.
	AccessKey string `json:"access_key,omitempty"`
	SecretKey string `json:"secret_key,omitempty"`
	// Insecure talks plain HTTP instead of HTTPS: for a store on
	// loopback or a private network only. Default false.
	Insecure bool `json:"insecure,omitempty"`
	// PathStyle puts the bucket in the URL's path instead of its host
	// name, as most self-hosted stores need. Default false (the client
	// picks from the endpoint).
	PathStyle bool `json:"path_style,omitempty"`
	// PartSize is the size in bytes of a multipart upload's parts: 5 MiB
	// to 1 GiB, default 8 MiB. Parts are streamed, so it costs no memory;
	// it sets the requests per upload (one per part).
	PartSize int64 `json:"part_size,omitempty"`

	// Store is the backend, set by Provision.
	*s3store.Store `json:"-"`
}

// CaddyModule returns the Caddy module information.
func (S3Storage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.mimi.attachments.s3",
		New: func() caddy.Module { return new(S3Storage) },
	}
}

// Provision resolves the placeholders and sets up the client.
func (s *S3Storage) Provision(ctx caddy.Context) error {
	repl := caddy.NewReplacer()
	cfg := s3store.Config{Insecure: s.Insecure, PathStyle: s.PathStyle, PartSize: s.PartSize}
	for _, f := range []struct {
		name string
		in   string
		out  *string
	}{
		{"endpoint", s.Endpoint, &cfg.Endpoint},
		{"bucket", s.Bucket, &cfg.Bucket},
		{"prefix", s.Prefix, &cfg.Prefix},
		{"region", s.Region, &cfg.Region},
		{"access_key", s.AccessKey, &cfg.AccessKey},
		{"secret_key", s.SecretKey, &cfg.SecretKey},
	} {
		v, err := repl.ReplaceOrErr(f.in, true, true)
		if err != nil {
			// The error names the placeholder, never its value.
			return fmt.Errorf("s3 attachment storage: %s: %w", f.name, err)
		}
		*f.out = v
	}
	st, err := s3store.New(cfg)
	if err != nil {
		return fmt.Errorf("s3 attachment storage: %w", err)
	}
	s.Store = st
	ctx.Logger().Debug("s3 attachment storage ready",
		zap.String("endpoint", cfg.Endpoint), zap.String("bucket", cfg.Bucket), zap.String("prefix", cfg.Prefix))
	return nil
}

// Cleanup closes the client's idle connections.
func (s *S3Storage) Cleanup() error {
	if s.Store != nil {
		return s.Store.Close()
	}
	return nil
}

// UnmarshalCaddyfile sets up the S3 storage from Caddyfile tokens, after
// the name of the module (storage s3 { ... } in the attachments block):
//
//	s3 {
//		endpoint   <host[:port]>
//		bucket     <name>
//		prefix     <prefix>
//		region     <region>
//		access_key <key>
//		secret_key <secret>
//		insecure
//		path_style
//		part_size  <size>
//	}
//
// endpoint and bucket are required; access_key and secret_key go
// together and should be placeholders ({env.NAME}, {file./path}). Every
// option may appear once.
func (s *S3Storage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		return d.ArgErr()
	}
	for opt, err := range caddyopts.Block(d, "s3") {
		if err != nil {
			return err
		}
		switch opt {
		case "endpoint", "bucket", "prefix", "region", "access_key", "secret_key":
			var v string
			if opt == "access_key" || opt == "secret_key" {
				if err := caddyopts.Secret(d, &v); err != nil {
					return err
				}
			} else if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			*map[string]*string{
				"endpoint": &s.Endpoint, "bucket": &s.Bucket, "prefix": &s.Prefix,
				"region": &s.Region, "access_key": &s.AccessKey, "secret_key": &s.SecretKey,
			}[opt] = v
		case "insecure", "path_style":
			if d.NextArg() {
				return d.ArgErr()
			}
			if opt == "insecure" {
				s.Insecure = true
			} else {
				s.PathStyle = true
			}
		case "part_size":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			n, err := humanize.ParseBytes(v)
			if err != nil || n < s3store.MinPartSize || n > s3store.MaxPartSize {
				return d.Errf("invalid part_size '%s': want 5MiB to 1GiB", v)
			}
			s.PartSize = int64(n)
		default:
			return d.Errf("unrecognized s3 option '%s'", opt)
		}
	}
	if s.Endpoint == "" || s.Bucket == "" {
		return d.Err("s3 storage needs endpoint and bucket")
	}
	if (s.AccessKey == "") != (s.SecretKey == "") {
		return d.Err("s3 storage needs both access_key and secret_key, or neither")
	}
	return nil
}

// String describes the storage without its keys.
func (s *S3Storage) String() string {
	return "s3 " + strconv.Quote(s.Endpoint) + " bucket " + strconv.Quote(s.Bucket)
}

// Interface guards.
var (
	_ caddy.Provisioner     = (*S3Storage)(nil)
	_ caddy.CleanerUpper    = (*S3Storage)(nil)
	_ caddyfile.Unmarshaler = (*S3Storage)(nil)
	_ storage.Backend       = (*S3Storage)(nil)
	_ storage.UploadSweeper = (*S3Storage)(nil)
)
