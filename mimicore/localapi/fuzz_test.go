package localapi

import (
	"bytes"
	"encoding/hex"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// FuzzBodies decodes arbitrary bytes as every body of the local API: a
// body that decodes must encode back to exactly its bytes (the decoders
// are strict, so there is one encoding per value).
//
//	go test -fuzz=FuzzBodies ./mimicore/localapi
func FuzzBodies(f *testing.F) {
	for _, seed := range []string{
		"00011e6d696d693a2f2f612e6578616d706c652f642f616c6963652f70686f6e650000000000000001",
		"00010000000000000001",
		"0001" + "0161" + "03" + "000161",
		"00012a0000000000000001000000006ab13b9e000000006ad8c89e02673109622e6578616d706c6504deadbeef",
		"00010001" + "166d696d693a2f2f612e6578616d706c652f752f626f62",
	} {
		b, _ := hex.DecodeString(seed)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, v := range []interface {
			wire.Marshaler
			wire.Unmarshaler
		}{new(BindingRequest), new(BindingAnswer), new(PublishRequest), new(KeyPackageList),
			new(MessageList), new(AckRequest), new(AckAnswer), new(ClaimRequest)} {
			if wire.Unmarshal(data, v, "body") != nil {
				continue
			}
			again, err := wire.Marshal(v)
			if err != nil {
				t.Fatalf("%T decoded but does not encode: %v", v, err)
			}
			if !bytes.Equal(again, data) {
				t.Fatalf("%T: %x re-encodes as %x", v, data, again)
			}
		}
	})
}
