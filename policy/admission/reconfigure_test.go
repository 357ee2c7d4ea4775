package admission

import (
	"context"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// TestOriginReconfigure checks that Reconfigure replaces an origin's fetch
// policy and logger in place: the refresh after it fetches the directory
// through the new policy (here, from another server) and logs to the new
// logger, and a token under the key it brings is accepted.
func TestOriginReconfigure(t *testing.T) {
	f := newPPFixture(t)
	ctx := context.Background()
	rotated, err := privacypass.GenerateKey(privacypass.TypeBlindRSA)
	if err != nil {
		t.Fatal(err)
	}
	rotatedIssuer, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: rotated})
	if err != nil {
		t.Fatal(err)
	}
	var firstDir, secondDir atomic.Pointer[[]byte]
	first, second := directoryOf(t, f.keys[privacypass.TypeBlindRSA]), directoryOf(t, rotated)
	firstDir.Store(&first)
	secondDir.Store(&second)
	url, firstPolicy := directoryServer(t, &firstDir)
	_, secondPolicy := directoryServer(t, &secondDir)
	// The second server is reached at the same URL, through its own
	// resolve entry.
	secondPolicy.AllowedPorts = append(secondPolicy.AllowedPorts, firstPolicy.AllowedPorts...)
	oldCore, oldLogs := observer.New(zapcore.InfoLevel)
	newCore, newLogs := observer.New(zapcore.InfoLevel)
	o, err := NewOrigin(ctx, OriginConfig{
		OriginConfig: privacypass.OriginConfig{IssuerName: "example.com", OriginInfo: []string{"ds.example.com"}, Spent: f.store},
		DirectoryURL: url, Fetch: firstPolicy, Logger: zap.New(oldCore),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	o.Reconfigure(secondPolicy, zap.New(newCore))
	oldLines := oldLogs.Len()
	if err := o.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	pl := newPolicy(t, Config{Origin: o, RequireToken: []string{"welcome_information"}}).Plan("welcome_information")
	challenge := challengeOf(t, pl.Before(ctx, &Request{}), privacypass.TypeBlindRSA)
	if err := pl.Before(ctx, &Request{Authorization: mintWith(t, rotatedIssuer.Issue, rotated, challenge)}); err != nil {
		t.Errorf("token under the key of the directory the new fetch policy reaches: %v", err)
	}
	if n := newLogs.FilterMessage("privacy pass origin ready").Len(); n != 1 {
		t.Errorf("the new logger has %d lines of the rebuilt origin, want 1", n)
	}
	if oldLogs.Len() != oldLines {
		t.Errorf("the old logger got %d lines after Reconfigure", oldLogs.Len()-oldLines)
	}
}
