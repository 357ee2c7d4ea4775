package ratelimit

import (
	"fmt"
	"net/netip"
)

// Default prefix lengths for IP keys: one IPv4 address, one IPv6 /64 (the
// smallest network usually assigned to a single subscriber, so one client
// cannot escape its limit by rotating addresses within it).
const (
	DefaultIPv4Bits = 32
	DefaultIPv6Bits = 64
)

// AppendIPKey appends the rate-limit key of addr to dst: the network of the
// address masked to v4Bits (IPv4, including IPv4-mapped IPv6 addresses) or
// v6Bits (IPv6), in prefix notation such as "192.0.2.0/24" or
// "2001:db8:1:2::/64". IPv6 zones are dropped. Used with a reused buffer
// and Zone.AllowBytes it does not allocate.
func AppendIPKey(dst []byte, addr netip.Addr, v4Bits, v6Bits int) ([]byte, error) {
	addr = addr.Unmap().WithZone("")
	bits := v6Bits
	if addr.Is4() {
		bits = v4Bits
	}
	if !addr.IsValid() {
		return dst, fmt.Errorf("invalid address")
	}
	p, err := addr.Prefix(bits)
	if err != nil {
		return dst, fmt.Errorf("masking %s to /%d: %w", addr, bits, err)
	}
	return p.AppendTo(dst), nil
}

// IPKey returns the rate-limit key of addr with the default prefix lengths
// (/32 for IPv4, /64 for IPv6).
func IPKey(addr netip.Addr) (string, error) {
	return PrefixKey(addr, DefaultIPv4Bits, DefaultIPv6Bits)
}

// PrefixKey returns the rate-limit key of addr masked to v4Bits or v6Bits;
// see AppendIPKey.
func PrefixKey(addr netip.Addr, v4Bits, v6Bits int) (string, error) {
	var buf [64]byte
	b, err := AppendIPKey(buf[:0], addr, v4Bits, v6Bits)
	if err != nil {
		return "", err
	}
	return string(b), nil
}
