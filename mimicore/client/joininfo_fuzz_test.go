package client

import (
	"bytes"
	"testing"
)

// FuzzJoinInfo decodes arbitrary bytes as the JoinInfo a member hands a
// joiner out of band: whatever decodes encodes back to exactly its bytes.
//
//	go test -fuzz=FuzzJoinInfo ./mimicore/client
func FuzzJoinInfo(f *testing.F) {
	for _, j := range []JoinInfo{{}, {GroupInfo: []byte("group info"), RatchetTree: []byte("tree")}, {GroupInfo: make([]byte, 300)}} {
		enc, err := j.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var j JoinInfo
		if j.UnmarshalBinary(data) != nil {
			return
		}
		out, err := j.MarshalBinary()
		if err != nil || !bytes.Equal(out, data) {
			t.Fatalf("%x decodes, and encodes as %x (%v)", data, out, err)
		}
	})
}
