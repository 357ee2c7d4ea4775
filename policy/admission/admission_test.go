package admission

import (
	"context"
	"encoding/base64"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-mimi/caddy-mimi/internal/metricstest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

func TestRateLimit(t *testing.T) {
	clk := newClock()
	p := newPolicy(t, Config{Now: clk.Now, Zones: []ZoneConfig{zoneCfg("per_ip", KeyRemoteIP, 2, time.Minute, "ds_domain")}})
	pl := p.Plan("ds_domain")
	before := func(addr string) error {
		r := &Request{}
		if addr != "" {
			r.ClientIP = ip(addr)
		}
		return pl.Before(context.Background(), r)
	}
	limited := counter("per_ip", "ds_domain", "limited")
	for i := range 2 {
		if err := before("192.0.2.1"); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	err := before("192.0.2.1")
	ref := refusal(t, err)
	if ref.Err.Code != moh.CodeRateLimited || ref.Challenge != "" {
		t.Fatalf("over the limit: %v", err)
	}
	// 2 events per minute: the next one is 30 s away.
	if ref.RetryAfter != 30*time.Second || ref.RetryAfterSeconds() != 30 {
		t.Fatalf("RetryAfter %v, want 30s", ref.RetryAfter)
	}
	if !errors.Is(err, ref.Err) || codeOf(err) != moh.CodeRateLimited {
		t.Fatal("the refusal does not unwrap to its DSError")
	}
	if got := counter("per_ip", "ds_domain", "limited") - limited; got != 1 {
		t.Fatalf("limited counter rose by %v", got)
	}
	for _, tc := range []struct {
		name, addr string
		want       moh.Code
	}{
		{"another address has its own bucket", "192.0.2.2", 0},
		{"IPv4-mapped IPv6 is the IPv4 client", "::ffff:192.0.2.1", moh.CodeRateLimited},
		{"first address of a /64", "2001:db8:1:2::1", 0},
		{"second address of the /64", "2001:db8:1:2::2", 0},
		{"third address of the /64", "2001:db8:1:2:ffff::3", moh.CodeRateLimited},
		{"another /64", "2001:db8:1:3::1", 0},
		{"first client without IP", "", 0},
		{"second client without IP", "", 0},
		{"non-IP clients share a bucket", "", moh.CodeRateLimited},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c := codeOf(before(tc.addr)); c != tc.want {
				t.Fatalf("code %v, want %v", c, tc.want)
			}
		})
	}
	t.Run("refills with time", func(t *testing.T) {
		clk.Advance(30 * time.Second)
		if err := before("192.0.2.1"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("endpoints outside the zone have no plan", func(t *testing.T) {
		for _, ep := range []string{"healthz", "group_operation", "nowhere"} {
			if p.Plan(ep) != nil {
				t.Errorf("%s has a plan", ep)
			}
		}
	})
}

func TestIPPrefixZone(t *testing.T) {
	p := newPolicy(t, Config{Zones: []ZoneConfig{{Name: "per_net", Key: KeyIPPrefix, IPv4Prefix: 24, IPv6Prefix: 48,
		Rate: 1.0 / 3600, Burst: 1, Endpoints: []string{"verification_key"}}}})
	pl := p.Plan("verification_key")
	for _, tc := range []struct {
		addr string
		want moh.Code
	}{
		{"198.51.100.7", 0},
		{"198.51.100.200", moh.CodeRateLimited},
		{"198.51.101.7", 0},
		{"2001:db8:1::1", 0},
		{"2001:db8:1:ffff::1", moh.CodeRateLimited},
		{"2001:db8:2::1", 0},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			if c := codeOf(pl.Before(context.Background(), &Request{ClientIP: ip(tc.addr)})); c != tc.want {
				t.Fatalf("code %v, want %v", c, tc.want)
			}
		})
	}
}

func TestPlaceholderZone(t *testing.T) {
	p := newPolicy(t, Config{Zones: []ZoneConfig{{Name: "per_user", Key: KeyPlaceholder, Template: "{user}",
		Rate: 1.0 / 3600, Burst: 1, Endpoints: []string{"group_operation"}}}})
	pl := p.Plan("group_operation")
	for _, tc := range []struct {
		name string
		repl Replacer
		want moh.Code
	}{
		{"alice", mapReplacer{"user": "alice"}, 0},
		{"alice again", mapReplacer{"user": "alice"}, moh.CodeRateLimited},
		{"bob", mapReplacer{"user": "bob"}, 0},
		{"empty expansion", mapReplacer{}, 0},
		{"no replacer shares the empty bucket", nil, moh.CodeRateLimited},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Request{ClientIP: ip("192.0.2.1"), Placeholders: tc.repl}
			if c := codeOf(pl.Before(context.Background(), r)); c != tc.want {
				t.Fatalf("code %v, want %v", c, tc.want)
			}
		})
	}
}

// TestDefaultEndpoints checks which endpoints a zone listing none covers:
// every endpoint its key applies to, except those marked NotDefault.
func TestDefaultEndpoints(t *testing.T) {
	p := newPolicy(t, Config{Zones: []ZoneConfig{
		zoneCfg("per_ip", KeyRemoteIP, 10, time.Second),
		zoneCfg("per_sender", KeySender, 10, time.Second),
		zoneCfg("per_member", KeyMember, 10, time.Second),
	}})
	for _, ep := range gatewayEndpoints() {
		t.Run(ep.Name, func(t *testing.T) {
			pl := p.Plan(ep.Name)
			if ep.NotDefault {
				if pl != nil {
					t.Fatal("a NotDefault endpoint is covered")
				}
				return
			}
			if pl == nil || len(pl.pre) != 1 {
				t.Fatal("the remote_ip zone does not cover it")
			}
			if pl.HasSenderZones() != (ep.Kind == KindProvider) {
				t.Errorf("HasSenderZones = %v", pl.HasSenderZones())
			}
			if pl.HasMemberZones() != (ep.Kind == KindClient) {
				t.Errorf("HasMemberZones = %v", pl.HasMemberZones())
			}
		})
	}
}

// TestZoneOrder checks that zones run in order, that a zone spends an event
// when it admits a request even if a later zone refuses it, and that a
// refusal stops the later zones.
func TestZoneOrder(t *testing.T) {
	p := newPolicy(t, Config{Zones: []ZoneConfig{
		zoneCfg("wide", KeyRemoteIP, 3, time.Hour, "ds_domain", "verification_key"),
		zoneCfg("tight", KeyRemoteIP, 1, time.Hour, "ds_domain"),
		zoneCfg("after", KeyRemoteIP, 5, time.Hour, "verification_key"),
	}})
	r := &Request{ClientIP: ip("192.0.2.9")}
	ctx := context.Background()
	wide := counter("wide", "ds_domain", "allowed")
	if err := p.Plan("ds_domain").Before(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := p.Plan("ds_domain").Before(ctx, r); codeOf(err) != moh.CodeRateLimited || !strings.Contains(err.Error(), "rate limit tight exceeded") {
		t.Fatalf("second request: %v", err)
	}
	if got := counter("wide", "ds_domain", "allowed") - wide; got != 2 {
		t.Fatalf("the wide zone admitted %v requests, want 2 (it spends even when a later zone refuses)", got)
	}
	// The wide zone, shared by both endpoints, has one event left: the
	// third request spends it, the fourth is refused before "after" runs.
	after := counter("after", "verification_key", "allowed")
	if err := p.Plan("verification_key").Before(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := p.Plan("verification_key").Before(ctx, r); codeOf(err) != moh.CodeRateLimited || !strings.Contains(err.Error(), "rate limit wide exceeded") {
		t.Fatalf("fourth request: %v", err)
	}
	if got := counter("after", "verification_key", "allowed") - after; got != 1 {
		t.Fatalf("the later zone ran %v times, want 1", got)
	}
}

func TestRateLimitedRounding(t *testing.T) {
	for _, tc := range []struct {
		in   time.Duration
		want int
	}{
		{0, 1}, {time.Nanosecond, 1}, {time.Second, 1}, {time.Second + time.Millisecond, 2}, {90 * time.Second, 90},
	} {
		t.Run(tc.in.String(), func(t *testing.T) {
			r := rateLimited("z", tc.in)
			if r.RetryAfterSeconds() != tc.want || r.RetryAfter != time.Duration(tc.want)*time.Second {
				t.Fatalf("RetryAfter %v, want %d s", r.RetryAfter, tc.want)
			}
			if r.Err.Code != moh.CodeRateLimited || r.Challenge != "" {
				t.Fatalf("refusal %+v", r)
			}
		})
	}
}

func TestPrivacyPassRequire(t *testing.T) {
	f := newPPFixture(t)
	p := newPolicy(t, Config{Origin: f.origin(t), RequireToken: []string{"/welcome_information"}})
	pl := p.Plan("welcome_information")
	ctx := context.Background()
	before := func(auth string) error {
		return pl.Before(ctx, &Request{ClientIP: ip("192.0.2.1"), Authorization: auth})
	}

	missing := counter(zonePrivacyPass, "welcome_information", "token_missing")
	err := before("")
	ref := refusal(t, err)
	if ref.Err.Code != moh.CodeTokenRequired || ref.RetryAfter != 0 {
		t.Fatalf("no token: %v", err)
	}
	if counter(zonePrivacyPass, "welcome_information", "token_missing")-missing != 1 {
		t.Fatal("token_missing not counted")
	}
	cs, err := privacypass.ParseWWWAuthenticate(ref.Challenge)
	if err != nil || len(cs) != 2 || cs[0].MaxAge <= 0 || cs[0].TokenKey == nil {
		t.Fatalf("challenges %+v: %v", cs, err)
	}
	tc, err := privacypass.ParseTokenChallenge(cs[0].TokenChallenge)
	if err != nil || tc.IssuerName != "issuer.example.com" || !reflect.DeepEqual(tc.OriginInfo, []string{"ds.example.com"}) {
		t.Fatalf("challenge %+v: %v", tc, err)
	}
	for _, typ := range []privacypass.TokenType{privacypass.TypeBlindRSA, privacypass.TypeVOPRF} {
		t.Run(typ.String(), func(t *testing.T) {
			auth := f.mint(t, challengeOf(t, before(""), typ), typ)
			accepted := counter(zonePrivacyPass, "welcome_information", "token_accepted")
			if err := before(auth); err != nil {
				t.Fatalf("valid token: %v", err)
			}
			if counter(zonePrivacyPass, "welcome_information", "token_accepted")-accepted != 1 {
				t.Fatal("token_accepted not counted")
			}
			refused := counter(zonePrivacyPass, "welcome_information", "token_refused")
			if err := before(auth); codeOf(err) != moh.CodeTokenRequired || refusal(t, err).Challenge == "" {
				t.Fatalf("replayed token: %v", err)
			}
			if counter(zonePrivacyPass, "welcome_information", "token_refused")-refused != 1 {
				t.Fatal("token_refused not counted")
			}
			other := f.mint(t, challengeOf(t, before(""), typ), typ)
			raw, _ := base64.URLEncoding.DecodeString(strings.TrimSuffix(strings.TrimPrefix(other, `PrivateToken token="`), `"`))
			raw[len(raw)-1] ^= 1
			if err := before("PrivateToken token=" + base64.URLEncoding.EncodeToString(raw)); codeOf(err) != moh.CodeTokenRequired {
				t.Fatalf("modified token: %v", err)
			}
		})
	}
	t.Run("token for another origin", func(t *testing.T) {
		foreign, err := (&privacypass.TokenChallenge{TokenType: privacypass.TypeBlindRSA, IssuerName: "issuer.example.com",
			OriginInfo: []string{"other.example"}}).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := before(f.mint(t, foreign, privacypass.TypeBlindRSA)); codeOf(err) != moh.CodeTokenRequired {
			t.Fatalf("token for another origin: %v", err)
		}
	})
	t.Run("other scheme", func(t *testing.T) {
		if err := before("Bearer abc"); codeOf(err) != moh.CodeTokenRequired {
			t.Fatalf("other scheme: %v", err)
		}
	})
}

// TestSpentAcrossRestart checks that a token spent before a restart stays
// spent after it: the record is in the SQLite store, and window contexts
// keep the challenge valid.
func TestSpentAcrossRestart(t *testing.T) {
	f := newPPFixture(t)
	first := newPolicy(t, Config{Scope: "first", Origin: f.origin(t), RequireToken: []string{"welcome_information"}})
	ctx := context.Background()
	req := func(auth string) *Request { return &Request{ClientIP: ip("192.0.2.1"), Authorization: auth} }
	challenge := challengeOf(t, first.Plan("welcome_information").Before(ctx, req("")), privacypass.TypeBlindRSA)
	spent := f.mint(t, challenge, privacypass.TypeBlindRSA)
	unspent := f.mint(t, challenge, privacypass.TypeBlindRSA)
	if err := first.Plan("welcome_information").Before(ctx, req(spent)); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Close(); err != nil {
		t.Fatal(err)
	}
	f.openStore(t)
	second := newPolicy(t, Config{Scope: "second", Origin: f.origin(t), RequireToken: []string{"welcome_information"}})
	if err := second.Plan("welcome_information").Before(ctx, req(spent)); codeOf(err) != moh.CodeTokenRequired {
		t.Fatalf("token spent before the restart: %v", err)
	}
	// The challenge itself is still accepted: the refusal above is the
	// double-spend record.
	if err := second.Plan("welcome_information").Before(ctx, req(unspent)); err != nil {
		t.Fatalf("unspent token after the restart: %v", err)
	}
}

// TestOverLimitTokenByIP checks over_limit token on a zone keyed on the
// request: over the limit a token admits the request.
func TestOverLimitTokenByIP(t *testing.T) {
	f := newPPFixture(t)
	z := zoneCfg("per_ip", KeyRemoteIP, 1, time.Hour, "welcome_information")
	z.OverLimitToken = true
	p := newPolicy(t, Config{Origin: f.origin(t), Zones: []ZoneConfig{z}})
	pl := p.Plan("welcome_information")
	before := func(auth string) error {
		return pl.Before(context.Background(), &Request{ClientIP: ip("192.0.2.1"), Authorization: auth})
	}
	over := counter("per_ip", "welcome_information", "over_limit_token")
	if err := before(""); err != nil {
		t.Fatalf("under the limit: %v", err)
	}
	err := before("")
	if codeOf(err) != moh.CodeTokenRequired {
		t.Fatalf("over the limit without a token: %v", err)
	}
	if counter("per_ip", "welcome_information", "over_limit_token")-over != 1 {
		t.Fatal("over_limit_token not counted")
	}
	auth := f.mint(t, challengeOf(t, err, privacypass.TypeBlindRSA), privacypass.TypeBlindRSA)
	if err := before(auth); err != nil {
		t.Fatalf("over the limit with a token: %v", err)
	}
	if err := before(auth); codeOf(err) != moh.CodeTokenRequired {
		t.Fatalf("over the limit with the same token again: %v", err)
	}
}

// TestZonesBeforeTokens checks that a client over a refusing zone is
// refused rate_limited before any token is looked at, even on an endpoint
// that requires one.
func TestZonesBeforeTokens(t *testing.T) {
	f := newPPFixture(t)
	p := newPolicy(t, Config{Origin: f.origin(t), RequireToken: []string{"welcome_information"},
		Zones: []ZoneConfig{zoneCfg("per_ip", KeyRemoteIP, 1, time.Hour, "welcome_information")}})
	pl := p.Plan("welcome_information")
	ctx := context.Background()
	challenge := challengeOf(t, pl.Before(ctx, &Request{ClientIP: ip("192.0.2.1")}), privacypass.TypeBlindRSA) // spends the only event
	auth := f.mint(t, challenge, privacypass.TypeBlindRSA)
	tokens := func() float64 {
		var n float64
		for _, o := range []string{"token_accepted", "token_refused", "token_missing", "token_unavailable"} {
			n += counter(zonePrivacyPass, "welcome_information", o)
		}
		return n
	}
	before := tokens()
	err := pl.Before(ctx, &Request{ClientIP: ip("192.0.2.1"), Authorization: auth})
	if ref := refusal(t, err); ref.Err.Code != moh.CodeRateLimited || ref.Challenge != "" {
		t.Fatalf("over the limit with a token: %v", err)
	}
	if tokens() != before {
		t.Fatal("the token was checked although the zone refused the request")
	}
}

// TestOneTokenAnswersAll checks that one token answers require and every
// over_limit token zone over its limit, and is redeemed once.
func TestOneTokenAnswersAll(t *testing.T) {
	f := newPPFixture(t)
	a := zoneCfg("tok_a", KeyRemoteIP, 1, time.Hour, "welcome_information")
	b := zoneCfg("tok_b", KeyIPPrefix, 1, time.Hour, "welcome_information")
	a.OverLimitToken, b.OverLimitToken = true, true
	p := newPolicy(t, Config{Origin: f.origin(t), RequireToken: []string{"welcome_information"}, Zones: []ZoneConfig{a, b}})
	pl := p.Plan("welcome_information")
	ctx := context.Background()
	challenge := challengeOf(t, pl.Before(ctx, &Request{ClientIP: ip("192.0.2.1")}), privacypass.TypeVOPRF) // both zones spent
	auth := f.mint(t, challenge, privacypass.TypeVOPRF)
	accepted := counter(zonePrivacyPass, "welcome_information", "token_accepted")
	if err := pl.Before(ctx, &Request{ClientIP: ip("192.0.2.1"), Authorization: auth}); err != nil {
		t.Fatalf("one token over two token zones and require: %v", err)
	}
	if n := counter(zonePrivacyPass, "welcome_information", "token_accepted") - accepted; n != 1 {
		t.Fatalf("token_accepted rose by %v, want 1", n)
	}
}

// TestOneTokenAnswersEveryStage checks that one token answers the over_limit
// token zones of every stage of a request: the token Before redeemed for
// a zone keyed on the request also answers the sender or member zones
// over their limit, with no second redemption (which would refuse the
// spent token), and the token stays spent for later requests.
func TestOneTokenAnswersEveryStage(t *testing.T) {
	for _, tc := range []struct {
		name, endpoint string
		key            KeyKind
		stage          func(*Plan, context.Context, *Request) error
	}{
		{"sender", "connection_request", KeySender, (*Plan).Sender},
		{"member", "group_operation", KeyMember, (*Plan).Member},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newPPFixture(t)
			byIP := zoneCfg("every_ip", KeyRemoteIP, 1, time.Hour, tc.endpoint)
			later := zoneCfg("every_"+tc.name, tc.key, 1, time.Hour, tc.endpoint)
			byIP.OverLimitToken, later.OverLimitToken = true, true
			p := newPolicy(t, Config{Origin: f.origin(t), Zones: []ZoneConfig{byIP, later}})
			pl := p.Plan(tc.endpoint)
			ctx := context.Background()
			req := func(auth string) *Request {
				return &Request{ClientIP: ip("192.0.2.1"), Sender: []byte("a.example"),
					Group: []byte("g1"), Member: []byte("alice"), Authorization: auth}
			}
			first := req("")
			if err := pl.Before(ctx, first); err != nil {
				t.Fatalf("Before under the limit: %v", err)
			}
			if err := tc.stage(pl, ctx, first); err != nil {
				t.Fatalf("%s under the limit: %v", tc.name, err)
			}
			err := pl.Before(ctx, req(""))
			auth := f.mint(t, challengeOf(t, err, privacypass.TypeBlindRSA), privacypass.TypeBlindRSA)
			accepted := counter(zonePrivacyPass, tc.endpoint, "token_accepted")
			r := req(auth)
			if err := pl.Before(ctx, r); err != nil {
				t.Fatalf("Before over the limit with a token: %v", err)
			}
			if err := tc.stage(pl, ctx, r); err != nil {
				t.Fatalf("%s over the limit with the token Before redeemed: %v", tc.name, err)
			}
			if n := counter(zonePrivacyPass, tc.endpoint, "token_accepted") - accepted; n != 1 {
				t.Fatalf("token_accepted rose by %v, want 1", n)
			}
			if err := tc.stage(pl, ctx, req(auth)); codeOf(err) != moh.CodeTokenRequired {
				t.Fatalf("%s of another request with the spent token: %v", tc.name, err)
			}
		})
	}
}

// TestSenderStage checks the sender_provider zones of stage 2, with
// over_limit token and refuse.
func TestSenderStage(t *testing.T) {
	f := newPPFixture(t)
	tokenZone := zoneCfg("per_provider", KeySender, 1, time.Hour, "connection_request")
	tokenZone.OverLimitToken = true
	p := newPolicy(t, Config{Origin: f.origin(t), Zones: []ZoneConfig{tokenZone,
		zoneCfg("refusing", KeySender, 1, time.Hour, "deliver_message"),
		func() ZoneConfig {
			z := zoneCfg("req_provider", KeySender, 1, time.Hour, "connection_key_packages")
			z.OverLimitToken = true
			return z
		}()},
		RequireToken: []string{"connection_key_packages"}})
	ctx := context.Background()
	sender := func(ep, from, auth string) error {
		pl := p.Plan(ep)
		if !pl.HasSenderZones() {
			t.Fatalf("%s has no sender zones", ep)
		}
		return pl.Sender(ctx, &Request{ClientIP: ip("192.0.2.1"), Sender: []byte(from), Authorization: auth})
	}
	t.Run("over_limit token", func(t *testing.T) {
		if err := sender("connection_request", "a.example", ""); err != nil {
			t.Fatalf("under the limit: %v", err)
		}
		err := sender("connection_request", "a.example", "")
		if codeOf(err) != moh.CodeTokenRequired {
			t.Fatalf("over the limit without a token: %v", err)
		}
		if err := sender("connection_request", "b.example", ""); err != nil {
			t.Fatalf("another provider has its own budget: %v", err)
		}
		auth := f.mint(t, challengeOf(t, err, privacypass.TypeBlindRSA), privacypass.TypeBlindRSA)
		if err := sender("connection_request", "a.example", auth); err != nil {
			t.Fatalf("over the limit with a token: %v", err)
		}
		if err := sender("connection_request", "a.example", auth); codeOf(err) != moh.CodeTokenRequired {
			t.Fatalf("over the limit with a spent token: %v", err)
		}
	})
	t.Run("refuse", func(t *testing.T) {
		if err := sender("deliver_message", "a.example", ""); err != nil {
			t.Fatal(err)
		}
		err := sender("deliver_message", "a.example", "")
		if ref := refusal(t, err); ref.Err.Code != moh.CodeRateLimited || ref.RetryAfterSeconds() != 3600 {
			t.Fatalf("refuse: %v, Retry-After %d", err, ref.RetryAfterSeconds())
		}
	})
	t.Run("require redeems in Before only", func(t *testing.T) {
		pl := p.Plan("connection_key_packages")
		err := pl.Before(ctx, &Request{ClientIP: ip("192.0.2.1")})
		auth := f.mint(t, challengeOf(t, err, privacypass.TypeBlindRSA), privacypass.TypeBlindRSA)
		if err := pl.Before(ctx, &Request{ClientIP: ip("192.0.2.1"), Authorization: auth}); err != nil {
			t.Fatal(err)
		}
		if err := sender("connection_key_packages", "a.example", auth); err != nil {
			t.Fatalf("under the limit: %v", err)
		}
		// Over the limit, the token Before redeemed answers: no second
		// redemption (which would refuse the spent token).
		if err := sender("connection_key_packages", "a.example", auth); err != nil {
			t.Fatalf("over the limit after Before redeemed: %v", err)
		}
	})
}

// TestMemberStage checks the group and member zones of stage 3 and their
// keys: group_id, and group_id || 0x00 || member.
func TestMemberStage(t *testing.T) {
	p := newPolicy(t, Config{Zones: []ZoneConfig{
		zoneCfg("per_member", KeyMember, 1, time.Hour, "group_operation"),
		zoneCfg("per_group", KeyGroup, 2, time.Hour, "group_operation"),
	}})
	pl := p.Plan("group_operation")
	if !pl.HasMemberZones() || pl.HasSenderZones() {
		t.Fatal("group_operation: wrong zones")
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name, group, member string
		want                moh.Code
	}{
		{"first", "g1", "alice", 0},
		{"member over its limit", "g1", "alice", moh.CodeRateLimited},
		{"another member", "g1", "bob", 0},
		{"group over its limit", "g1", "carol", moh.CodeRateLimited},
		{"another group", "g2", "carol", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := pl.Member(ctx, &Request{Group: []byte(tc.group), Member: []byte(tc.member)})
			if codeOf(err) != tc.want {
				t.Fatalf("code %v, want %v", codeOf(err), tc.want)
			}
		})
	}
	t.Run("keys", func(t *testing.T) {
		now := p.now()
		member := pl.member[0].zone.rl
		if ok, _ := member.Allow("g2\x00carol", now); ok {
			t.Error("the member key is not group_id || 0x00 || member")
		}
		if ok, _ := member.Allow("g3\x00dave", now); !ok {
			t.Error("an unused member key is refused")
		}
		group := pl.member[1].zone.rl
		if ok, _ := group.Allow("g2", now); !ok {
			t.Error("the group key is not group_id (g2 has one event left)")
		}
		if ok, _ := group.Allow("g2", now); ok {
			t.Error("the group key is not group_id")
		}
	})
	t.Run("other endpoints have no member zones", func(t *testing.T) {
		if err := p.Plan("welcome_information").Member(ctx, &Request{Group: []byte("g1"), Member: []byte("alice")}); err != nil {
			t.Fatal(err)
		}
	})
}

// failingStore is a SpentStore whose backend is down.
type failingStore struct{}

func (failingStore) MarkSpent(context.Context, []byte, time.Time) (bool, error) {
	return false, errors.New("disk on fire")
}

// TestRedeemStoreFailure checks that a double-spend store failure is
// backend_unavailable without a challenge (the token is fine and may be
// retried), counted token_unavailable and logged at error level.
func TestRedeemStoreFailure(t *testing.T) {
	f := newPPFixture(t)
	o, err := NewOrigin(context.Background(), OriginConfig{OriginConfig: privacypass.OriginConfig{
		IssuerName: "issuer.example.com", Keys: f.issuer.Keys(), Spent: failingStore{}}})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	core, logs := observer.New(zapcore.DebugLevel)
	p := newPolicy(t, Config{Origin: o, RequireToken: []string{"welcome_information"}, Logger: zap.New(core)})
	pl := p.Plan("welcome_information")
	ctx := context.Background()
	challenge := challengeOf(t, pl.Before(ctx, &Request{}), privacypass.TypeBlindRSA)
	auth := f.mint(t, challenge, privacypass.TypeBlindRSA)
	unavailable := counter(zonePrivacyPass, "welcome_information", "token_unavailable")
	err = pl.Before(ctx, &Request{Authorization: auth})
	ref := refusal(t, err)
	if ref.Err.Code != moh.CodeBackendUnavailable || ref.Challenge != "" || ref.RetryAfter != 0 {
		t.Fatalf("store failure: %+v", ref)
	}
	if counter(zonePrivacyPass, "welcome_information", "token_unavailable")-unavailable != 1 {
		t.Fatal("token_unavailable not counted")
	}
	entries := logs.FilterLevelExact(zapcore.ErrorLevel).All()
	if len(entries) != 1 || entries[0].ContextMap()["endpoint"] != "welcome_information" ||
		!strings.Contains(entries[0].Message, "recording a spent privacy pass token failed") {
		t.Fatalf("error logs %+v", entries)
	}
}

// TestLogs checks the refusal logs (debug, with zone and endpoint, never
// the token) and the warning when no zone limits token issuance.
func TestLogs(t *testing.T) {
	f := newPPFixture(t)
	t.Run("refusals", func(t *testing.T) {
		core, logs := observer.New(zapcore.DebugLevel)
		p := newPolicy(t, Config{Origin: f.origin(t), Logger: zap.New(core), RequireToken: []string{"group_operation"},
			Zones: []ZoneConfig{zoneCfg("per_ip", KeyRemoteIP, 1, time.Hour, "ds_domain", "token_request")}})
		ctx := context.Background()
		r := &Request{ClientIP: ip("2001:db8::1"), Authorization: "PrivateToken token=AAAA"}
		p.Plan("ds_domain").Before(ctx, r)       //nolint:errcheck // spends the event
		p.Plan("ds_domain").Before(ctx, r)       //nolint:errcheck // refused
		p.Plan("group_operation").Before(ctx, r) //nolint:errcheck // refused token
		limited := logs.FilterMessage("rate limited request").All()
		if len(limited) != 1 || limited[0].Level != zapcore.DebugLevel {
			t.Fatalf("rate limited logs %+v", limited)
		}
		if m := limited[0].ContextMap(); m["zone"] != "per_ip" || m["endpoint"] != "ds_domain" || m["remote_ip"] != "2001:db8::1" {
			t.Fatalf("rate limited fields %v", m)
		}
		refused := logs.FilterMessage("refused privacy pass token").All()
		if len(refused) != 1 || refused[0].Level != zapcore.DebugLevel || refused[0].ContextMap()["endpoint"] != "group_operation" {
			t.Fatalf("refused token logs %+v", refused)
		}
		for _, e := range logs.All() {
			for _, v := range e.ContextMap() {
				if s, ok := v.(string); ok && strings.Contains(s, "AAAA") {
					t.Fatalf("a log carries the token: %+v", e)
				}
			}
		}
		if n := logs.FilterMessageSnippet("no rate_limit zone covers").Len(); n != 0 {
			t.Fatalf("warned although token_request is covered")
		}
	})
	t.Run("issuer without a zone", func(t *testing.T) {
		core, logs := observer.New(zapcore.InfoLevel)
		newPolicy(t, Config{Issuer: f.issuer, Logger: zap.New(core),
			Zones: []ZoneConfig{zoneCfg("per_sender", KeySender, 1, time.Hour)}})
		w := logs.FilterMessageSnippet("no rate_limit zone covers the issuer's token_request").All()
		if len(w) != 1 || w[0].Level != zapcore.WarnLevel || w[0].ContextMap()["request_path"] != DefaultRequestPath {
			t.Fatalf("warnings %+v", w)
		}
	})
}

func TestPeers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		peers *Peers
		ok    map[string]bool
	}{
		{"allow and deny", &Peers{Allow: []string{"a.example", "b.example"}, Deny: []string{"b.example"}},
			map[string]bool{"a.example": true, "b.example": false, "c.example": false}},
		{"deny only", &Peers{Deny: []string{"evil.example"}},
			map[string]bool{"evil.example": false, "good.example": true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check := newPolicy(t, Config{Peers: tc.peers}).PeerPolicy()
			for sender, ok := range tc.ok {
				refused := counter(zonePeers, "provider", "refused")
				err := check(sender)
				if (err == nil) != ok {
					t.Errorf("%s: %v", sender, err)
				}
				if !ok && (codeOf(err) != moh.CodeForbidden || counter(zonePeers, "provider", "refused")-refused != 1) {
					t.Errorf("%s: refusal %v not forbidden or not counted", sender, err)
				}
			}
		})
	}
	t.Run("no list", func(t *testing.T) {
		if newPolicy(t, Config{}).PeerPolicy() != nil {
			t.Fatal("a peer policy without a peers list")
		}
	})
}

// TestZonesSharedAcrossPolicies checks that a zone keeps its buckets across
// Policies of the same Scope and name (a config reload: the new Policy is
// built before the old one is closed), takes the new limits, and is dropped
// with its last Policy.
func TestZonesSharedAcrossPolicies(t *testing.T) {
	clk := newClock()
	scope := t.TempDir()
	cfg := func(window time.Duration) Config {
		return Config{Scope: scope, Endpoints: gatewayEndpoints(), Now: clk.Now,
			Zones: []ZoneConfig{zoneCfg("z", KeyRemoteIP, 1, window, "verification_key")}}
	}
	mustNew := func(c Config) *Policy {
		p, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
		return p
	}
	mustClose := func(p *Policy) {
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
	}
	before := func(p *Policy) error {
		return p.Plan("verification_key").Before(context.Background(), &Request{ClientIP: ip("198.51.100.7")})
	}
	key := registryKey(scope, &cfg(time.Hour).Zones[0])
	a := mustNew(cfg(time.Hour))
	if err := before(a); err != nil {
		t.Fatal(err)
	}
	b := mustNew(cfg(time.Hour))
	mustClose(a)
	if err := before(b); codeOf(err) != moh.CodeRateLimited {
		t.Fatalf("after reload: %v, want rate_limited (bucket state lost)", err)
	}
	t.Run("another scope has its own buckets", func(t *testing.T) {
		other := cfg(time.Hour)
		other.Scope = scope + "/other"
		o := mustNew(other)
		defer mustClose(o)
		if err := before(o); err != nil {
			t.Fatal(err)
		}
	})
	// A reload with a faster rate applies it to the existing bucket, which
	// refills at the new rate: 1 event per millisecond.
	c := mustNew(cfg(time.Millisecond))
	mustClose(b)
	clk.Advance(5 * time.Millisecond)
	if err := before(c); err != nil {
		t.Fatalf("after raising the rate: %v", err)
	}
	if n := zones.refs(key); n != 1 {
		t.Fatalf("%d references, want 1", n)
	}
	mustClose(c)
	mustClose(c) // idempotent
	if n := zones.refs(key); n != 0 {
		t.Fatalf("the zone outlived every policy using it (%d references)", n)
	}
}

// TestReloadChangingZoneShape checks a reload (a new Policy acquiring the
// zone while the old one still holds it) that changes what a zone cannot
// change in place, its bound on keys or its key kind: the new Policy gets
// a zone of its own, built from its configuration, and the old Policy
// keeps its zone until it closes.
func TestReloadChangingZoneShape(t *testing.T) {
	for _, tc := range []struct {
		name      string
		old, next func(*ZoneConfig)
	}{
		{"max_keys", func(z *ZoneConfig) { z.MaxKeys = 64 }, func(z *ZoneConfig) { z.MaxKeys = 100000 }},
		{"key kind", func(z *ZoneConfig) { z.MaxKeys = 64 }, func(z *ZoneConfig) { z.Key, z.IPv4Prefix, z.MaxKeys = KeyIPPrefix, 32, 100000 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			scope := t.TempDir()
			zc := zoneCfg("z", KeyRemoteIP, 10, time.Hour, "welcome_information")
			tc.old(&zc)
			oldCfg := zc
			p1 := newPolicy(t, Config{Scope: scope, Zones: []ZoneConfig{zc}})
			tc.next(&zc)
			p2 := newPolicy(t, Config{Scope: scope, Zones: []ZoneConfig{zc}})
			oldZone := p1.Plan("welcome_information").pre[0].zone.rl
			pl := p2.Plan("welcome_information")
			if pl.pre[0].zone.rl == oldZone {
				t.Fatal("the reload kept the old zone")
			}
			now := p2.now()
			var buf [64]byte
			for i := range 1000 {
				r := &Request{ClientIP: netip.AddrFrom4([4]byte{10, 0, byte(i / 256), byte(i % 256)})}
				if _, _, err := pl.pre[0].zone.allowRequest(buf[:0], r, now); err != nil {
					t.Fatal(err)
				}
			}
			if n := pl.pre[0].zone.rl.Len(); n < 1000 {
				t.Fatalf("the new zone holds %d of 1000 keys under max_keys 100000", n)
			}
			if n := zones.refs(registryKey(scope, &oldCfg)); n != 1 {
				t.Fatalf("the old zone has %d references, want 1 (the old Policy's)", n)
			}
			if err := p1.Close(); err != nil {
				t.Fatal(err)
			}
			if n := zones.refs(registryKey(scope, &oldCfg)); n != 0 {
				t.Fatalf("the old zone outlived its Policy (%d references)", n)
			}
			if n := zones.refs(registryKey(scope, &zc)); n != 1 {
				t.Fatalf("the new zone has %d references, want 1", n)
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"invalid", Config{Zones: []ZoneConfig{{Name: "z"}}}, "rate_limit z: rate 0"},
		{"require without origin", Config{PrivacyPass: true, RequireToken: []string{"group_operation"}},
			"token redemption is configured but there is no Origin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Endpoints, tc.cfg.Scope = gatewayEndpoints(), t.Name()
			if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
	t.Run("a failed New releases its zones", func(t *testing.T) {
		scope := t.Name()
		// The second zone passes Validate but ratelimit refuses it: MaxKeys
		// below the shard count.
		cfg := Config{Scope: scope, Endpoints: gatewayEndpoints(), Zones: []ZoneConfig{
			zoneCfg("ok", KeyRemoteIP, 1, time.Second),
			{Name: "bad", Key: KeyRemoteIP, Rate: 1, Burst: 1, MaxKeys: 1},
		}}
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "rate_limit bad") {
			t.Fatalf("New: %v", err)
		}
		if n := zones.refs(registryKey(scope, &cfg.Zones[0])); n != 0 {
			t.Fatalf("the first zone is still held (%d references)", n)
		}
	})
}

func TestNilSafety(t *testing.T) {
	var p *Policy
	if p.Plan("group_operation") != nil || p.PeerPolicy() != nil {
		t.Fatal("nil policy")
	}
	var pl *Plan
	ctx := context.Background()
	r := &Request{}
	if pl.Before(ctx, r) != nil || pl.Sender(ctx, r) != nil || pl.Member(ctx, r) != nil || pl.HasSenderZones() || pl.HasMemberZones() {
		t.Fatal("nil plan")
	}
}

func TestMetrics(t *testing.T) {
	p := newPolicy(t, Config{Zones: []ZoneConfig{zoneCfg("metrics_zone", KeyRemoteIP, 1, time.Hour, "ds_domain")}})
	gather := func() map[string]float64 { return metricstest.Of(t, Collectors()...) }
	// The decision counters are package-level: compare deltas.
	before := gather()
	for _, a := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.2"} {
		p.Plan("ds_domain").Before(context.Background(), &Request{ClientIP: ip(a)}) //nolint:errcheck // counted
	}
	after := gather()
	for name, want := range map[string]float64{
		"caddy_mimi_rate_limit_keys{zone=metrics_zone,}":                                           2,
		"caddy_mimi_rate_limit_evictions_total{zone=metrics_zone,}":                                0,
		"caddy_mimi_policy_decisions_total{endpoint=ds_domain,outcome=allowed,zone=metrics_zone,}": 2,
		"caddy_mimi_policy_decisions_total{endpoint=ds_domain,outcome=limited,zone=metrics_zone,}": 1,
	} {
		t.Run(name, func(t *testing.T) {
			v, ok := after[name]
			if strings.HasPrefix(name, "caddy_mimi_policy_decisions_total") {
				v -= before[name]
			}
			if !ok || v != want {
				t.Fatalf("= %v (present %v), want %v", v, ok, want)
			}
		})
	}
}
