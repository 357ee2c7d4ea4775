package moh

import (
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

func BenchmarkProviderRequestEncode(b *testing.B) {
	req := sampleMessages()["ProviderRequest"].msg.(*ProviderRequest)
	req.Payload = make([]byte, 1024)
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := wire.Append(buf[:0], req); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkProviderRequestDecode(b *testing.B) {
	req := sampleMessages()["ProviderRequest"].msg.(*ProviderRequest)
	req.Payload = make([]byte, 1024)
	enc, err := wire.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	var d ProviderRequest
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		if err := wire.Unmarshal(enc, &d, "ProviderRequest"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDSRequestDecode(b *testing.B) {
	enc, err := wire.Marshal(sampleMessages()["DSRequest/copy"].msg)
	if err != nil {
		b.Fatal(err)
	}
	var d DSRequest
	b.ReportAllocs()
	for b.Loop() {
		if err := wire.Unmarshal(enc, &d, "DSRequest"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDSResponseEncodeKeys(b *testing.B) {
	resp := sampleMessages()["DSResponse/keys"].msg
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := wire.Append(buf[:0], resp); err != nil {
			b.Fatal(err)
		}
	}
}
