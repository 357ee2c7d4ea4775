package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/testca"
	"github.com/caddy-mimi/caddy-mimi/internal/testdir"
	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// TestIndependentPeer runs testdata/peers/mimi-peer, a Node.js provider
// written from docs/protocol.md alone, as provider peer.localhost against
// b.localhost: it serves its own discovery and verification key over TLS
// 1.3, claims KeyPackages of b's clients with group_key_packages and
// connection_key_packages (checking their RFC 9420 and binding
// signatures), delivers a Welcome and a message of a group it hosts, and
// checks the gateway's error answers. b must find the peer: the test
// reloads the configuration with a resolve entry for peer.localhost.
func TestIndependentPeer(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("node is not installed; the mimi-peer interop test needs Node >= 20")
		}
		t.Skip("node is not installed; the mimi-peer interop test needs Node >= 20")
	}
	startCaddy(t)
	peerDir, err := testdir.Path("peers", "mimi-peer")
	if err != nil {
		t.Fatal(err)
	}

	// The peer's port, certificate (from the root Caddy's CA uses, which b's
	// federation root_ca trusts) and b's route to it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peerAddr := l.Addr().String()
	l.Close()
	certFile, keyFile := writePeerCert(t, "peer.localhost")

	base := baseConfig()
	const bBlock = "\t\tmax_body 64KiB\n\t\tfederation {\n\t\t\tallow_private_addresses\n\t\t\tallow_ports 9443\n"
	if !strings.Contains(base, bBlock) {
		t.Fatal("the test configuration changed: b.localhost's federation block not found")
	}
	_, port, _ := net.SplitHostPort(peerAddr)
	cfg := strings.Replace(base, bBlock, "\t\tmax_body 64KiB\n\t\tfederation {\n\t\t\tallow_private_addresses\n\t\t\tallow_ports 9443 "+port+
		"\n\t\t\tresolve peer.localhost "+peerAddr+"\n", 1)
	env.tester.InitServer(cfg, "caddyfile")
	defer env.tester.InitServer(base, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	waitTLS(t, "b.localhost")

	// The document's worked examples, recomputed by the peer from the text.
	t.Run("selftest", func(t *testing.T) {
		cmd := exec.Command("node", "mimi-peer.mjs", "selftest")
		cmd.Dir = peerDir
		out, err := cmd.CombinedOutput()
		t.Logf("mimi-peer selftest:\n%s", out)
		if err != nil {
			t.Fatalf("mimi-peer selftest: %v", err)
		}
	})

	issuer := &binding.Issuer{Domains: []string{"b.localhost"}, Keys: keyRingOf(t, "b.localhost")}
	// Each run has a new provider key, which b fetches on its new key_id;
	// the last answers POST /verification_key with 405, so b's fetcher falls
	// back to GET (§4.1).
	for _, run := range []struct {
		name, scheme string
		post405      bool
	}{
		{"ed25519", "ed25519", false}, {"p256", "p256", false}, {"get-only", "ed25519", true},
	} {
		t.Run(run.name, func(t *testing.T) {
			args := []string{"--scheme", run.scheme, "--listen", peerAddr, "--cert", certFile, "--key", keyFile}
			if run.post405 {
				args = append(args, "--vk-post-405")
			}
			runPeer(t, issuer, peerDir, args...)
		})
	}
}

// runPeer publishes KeyPackages of two clients of a new user of b, runs the
// peer against b with peerArgs, and checks what it
// delivered reached b's queue.
func runPeer(t *testing.T, issuer *binding.Issuer, peerDir string, peerArgs ...string) {
	// Two clients of one user of b, each with a KeyPackage published through
	// b's local client API: group_key_packages claims the phone's,
	// connection_key_packages then finds only the laptop's.
	user := "peer" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10) // fresh per run (-count > 1)
	phone := newMIMIClientAt(t, issuer, "b.localhost", user, "phone", false)
	laptop := newMIMIClientAt(t, issuer, "b.localhost", user, "laptop", false)
	for _, c := range []*mimiClient{phone, laptop} {
		status, body := postLocal(t, "b.localhost", user, "/key_packages", &localapi.PublishRequest{ClientURI: []byte(c.uri),
			KeyPackages: []localapi.KeyPackageEntry{{KeyPackage: mustEncode(t, c.kp)}}})
		if status != http.StatusOK {
			t.Fatalf("publishing %s's KeyPackage at b: %d %x", c.uri, status, body)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append(append([]string{"mimi-peer.mjs", "run"}, peerArgs...),
		"--domain", "peer.localhost",
		"--gateway", "b.localhost:9443", "--connect", httpsAddr, "--ca", env.rootFile,
		"--client", phone.uri, "--user", moh.UserURI("b.localhost", user), "--expect-key-packages", "1")...)
	cmd.Dir = peerDir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("mimi-peer:\n%s", stdout.String())
	if err != nil {
		t.Fatalf("mimi-peer: %v\nstderr:\n%s", err, stderr.String())
	}

	// What the peer delivered is in the phone's queue at b, each once, from
	// peer.localhost: the Welcome, the message of the group whose Welcome
	// named no client of b, then the message of the first group.
	got := fetchQueue(t, phone, user, 0, 5)
	want := []mls.WireFormat{mls.WireFormatWelcome, mls.WireFormatPrivateMessage, mls.WireFormatPrivateMessage}
	if len(got) != len(want) {
		t.Fatalf("the phone's queue at b holds %d messages, want the peer's Welcome and two messages", len(got))
	}
	for i, wf := range want {
		m, err := mls.DecodeMLSMessage(got[i].Message)
		if err != nil || m.WireFormat != wf || string(got[i].Sender) != "peer.localhost" {
			t.Fatalf("queued message %d: from %q (%v), want wire format %v from peer.localhost", i, got[i].Sender, err, wf)
		}
	}
	if !bytes.Equal(got[0].GroupID, got[2].GroupID) || bytes.Equal(got[0].GroupID, got[1].GroupID) {
		t.Fatalf("queued group ids %x %x %x: want the Welcome's group for the first and last", got[0].GroupID, got[1].GroupID, got[2].GroupID)
	}

	// connection_key_packages handed out the laptop's KeyPackage, and the
	// peer's connection_request added it: the laptop's queue holds that
	// Welcome once, although the peer sent the request twice.
	conn := fetchQueue(t, laptop, user, 0, 5)
	if len(conn) != 1 {
		t.Fatalf("the laptop's queue at b holds %d messages, want the peer's connection_request Welcome", len(conn))
	}
	if m, err := mls.DecodeMLSMessage(conn[0].Message); err != nil || m.WireFormat != mls.WireFormatWelcome ||
		string(conn[0].Sender) != "peer.localhost" || bytes.Equal(conn[0].GroupID, got[0].GroupID) || bytes.Equal(conn[0].GroupID, got[1].GroupID) {
		t.Fatalf("the laptop's queued message: group %x from %q (%v), want a Welcome of a connection group from peer.localhost", conn[0].GroupID, conn[0].Sender, err)
	}
}

// writePeerCert issues a certificate for host from the test root and
// writes it and its key to the test directory.
func writePeerCert(t *testing.T, host string) (string, string) {
	t.Helper()
	rootPEM, err := os.ReadFile(filepath.Join(env.dir, testca.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(env.dir, testca.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	cb, _ := pem.Decode(rootPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		t.Fatal("test root not PEM")
	}
	root, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	rootKey, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, &key.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(env.dir, host+"-cert.pem"), filepath.Join(env.dir, host+"-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
