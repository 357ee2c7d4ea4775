package provider

import (
	"net/netip"
	"testing"
)

// TestPublicAddr checks the fetch policy's address filter against the IANA
// IPv4 and IPv6 special-purpose registries: every range that is not
// globally reachable, and every form that embeds an IPv4 address in IPv6
// (NAT64, 6to4, Teredo, IPv4-compatible, SIIT), is refused.
func TestPublicAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		// Public unicast.
		"1.1.1.1": true, "8.8.8.8": true, "93.184.215.14": true, "192.0.1.1": true, "198.17.255.255": true,
		"198.20.0.1": true, "223.255.255.254": true, "100.63.255.255": true, "100.128.0.1": true,
		"2606:4700:4700::1111": true, "2a00:1450:4001:80b::200e": true, "2001:4860:4860::8888": true,
		"::ffff:8.8.8.8": true, // IPv4-mapped: dialed as IPv4, judged as IPv4
		// IPv4 special-purpose.
		"0.0.0.0": false, "0.1.2.3": false, "10.1.2.3": false, "100.64.0.1": false, "100.127.255.254": false,
		"127.0.0.1": false, "169.254.169.254": false, "172.16.0.1": false, "172.31.255.255": false,
		"192.0.0.8": false, "192.0.0.170": false, "192.0.2.1": false, "192.88.99.1": false,
		"192.168.1.1": false, "198.18.0.1": false, "198.19.255.255": false, "198.51.100.7": false,
		"203.0.113.9": false, "224.0.0.1": false, "239.255.255.250": false, "240.0.0.1": false,
		"255.255.255.255": false,
		"::ffff:127.0.0.1": false, "::ffff:10.0.0.1": false, "::ffff:198.18.0.1": false,
		// IPv6 special-purpose.
		"::": false, "::1": false, "fe80::1": false, "fec0::1": false, "fc00::1": false, "fd12:3456::1": false,
		"ff02::1": false, "ff0e::1": false, "100::1": false, "2001:db8::1": false, "3fff::1": false,
		"2001:2::1": false, "2001:10::1": false, "2001:20::1": false, "5f00::1": false,
		// IPv4 embedded in IPv6: refused outright, whatever the IPv4 part.
		"64:ff9b::8.8.8.8": false, "64:ff9b::127.0.0.1": false, "64:ff9b::a9fe:a9fe": false,
		"64:ff9b:1::8.8.8.8": false, "64:ff9b:1:ffff::1": false,
		"2002:0808:0808::1": false, "2002:7f00:0001::1": false, "2002:c0a8:0101::1": false,
		"2001::1": false, "2001:0:4136:e378:8000:63bf:3fff:fdd2": false,
		"::8.8.8.8": false, "::127.0.0.1": false, "::10.0.0.1": false,
		"::ffff:0:8.8.8.8": false, "::ffff:0:127.0.0.1": false,
	} {
		t.Run(addr, func(t *testing.T) {
			if got := publicAddr(netip.MustParseAddr(addr)); got != want {
				t.Errorf("publicAddr(%s) = %v, want %v", addr, got, want)
			}
		})
	}
}
