package caddymodule

import (
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// Names of the KeyPackage claim limits' zones.
const (
	// claimZonePeers bounds a peer provider's claims of one local user
	// (the gateway's group_key_packages, connection_key_packages).
	claimZonePeers = "key_packages"
	// claimZoneLocal bounds a local user's claims of one target user
	// (mimi_local's /claim_key_packages).
	claimZoneLocal = "local_key_packages"
	// claimZoneRemote bounds a local user's claims of other providers'
	// KeyPackages, across all targets (mimi_local's remote_claim_rate).
	claimZoneRemote = "local_remote_key_packages"
	// publishZone bounds a local user's publishes of KeyPackages
	// (mimi_local's publish_rate).
	publishZone = "local_key_package_publishes"
)

// limitZonePool keeps the zones of the built-in limits (the KeyPackage
// claim limits, the relay limit) across config reloads, keyed by
// limitZoneKey: Caddy provisions a new config before it
// cleans up the old one, so the new config finds the old zone with its
// buckets, and a reload does not hand every (sender, user) pair a full
// burst again. Handlers of one data directory (sites of one provider)
// hold one zone of each name.
var limitZonePool = caddy.NewUsagePool()

// limitZoneKey is the key of a zone in limitZonePool: the data
// directory, the zone's name and its rate and burst, so that other limits
// build a zone of their own.
func limitZoneKey(dataDir, name string, rate float64, burst int) string {
	return dataDir + "\x00" + name + "\x00" + strconv.FormatFloat(rate, 'g', -1, 64) + "\x00" + strconv.Itoa(burst)
}

// acquireClaimZone returns the claim zone name of dataDir at the claim
// limit (keyPackageRate after a burst of keyPackageBurst), from
// limitZonePool, and its key there; the caller releases it with
// limitZonePool.Delete(key).
func acquireClaimZone(dataDir, name string) (*ratelimit.Zone, string, error) {
	return acquireLimitZone(dataDir, name, keyPackageRate, keyPackageBurst)
}

// acquireLimitZone returns the zone name of dataDir at rate (per second)
// after burst, from limitZonePool, and its key there; the caller releases
// it with limitZonePool.Delete(key).
func acquireLimitZone(dataDir, name string, rate float64, burst int) (*ratelimit.Zone, string, error) {
	key := limitZoneKey(dataDir, name, rate, burst)
	v, _, err := limitZonePool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return ratelimit.NewZone(name, ratelimit.Config{Rate: rate, Burst: burst})
	})
	if err != nil {
		return nil, "", fmt.Errorf("KeyPackage claim limits: %w", err)
	}
	return v.(*ratelimit.Zone), key, nil
}
