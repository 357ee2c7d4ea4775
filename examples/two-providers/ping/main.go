// Command ping sends one provider-signed request from alpha.localhost to
// beta.localhost, the two providers of examples/two-providers, and prints
// beta's answer. It signs with alpha's own key (read from alpha's data
// directory) and reaches beta through discovery, exactly as a peer
// provider would; beta verifies the signature with the key it fetches from
// alpha's /verification_key.
package main

import (
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

func main() {
	data := flag.String("data", "./data", "the XDG_DATA_HOME the example's Caddy runs with")
	addr := flag.String("addr", "127.0.0.1:9443", "where both providers listen")
	flag.Parse()
	if err := run(*data, *addr); err != nil {
		log.Fatal(err)
	}
}

func run(data, addr string) error {
	keys, err := provider.LoadKeyRing(filepath.Join(data, "mimi", "alpha", "keys"))
	if err != nil {
		return err
	}
	rootPEM, err := os.ReadFile(filepath.Join(data, "caddy", "pki", "authorities", "local", "root.crt"))
	if err != nil {
		return fmt.Errorf("reading Caddy's local CA root: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	client := &provider.Client{
		Sender: "alpha.localhost",
		Keys:   keys,
		Fetcher: provider.NewKeyFetcher(provider.FetchPolicy{
			AllowPrivate: true, AllowedPorts: []int{9443}, RootCAs: roots,
			Resolve: map[string]string{"alpha.localhost": addr, "beta.localhost": addr},
		}),
	}
	payload, err := wire.Marshal(&moh.ConnectionKeyPackagesRequest{
		Requester: []byte("mimi://alpha.localhost/u/alice"),
		UserID:    []byte("mimi://beta.localhost/u/bob"),
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ans, err := client.Send(ctx, "beta.localhost", moh.ConnectionKeyPackages, payload)
	if err != nil {
		return err
	}
	fmt.Printf("beta answered HTTP %d, response type %d", ans.Status, ans.Response.Type)
	if e := ans.Err(); e != nil {
		fmt.Printf(": %v", e)
	}
	fmt.Println()
	return nil
}
