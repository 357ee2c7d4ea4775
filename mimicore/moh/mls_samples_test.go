package moh

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"sync"

	"github.com/caddy-mimi/caddy-mimi/internal/testdir"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// samplePrivateMessage is a well-formed application PrivateMessage (the DS
// sees only its outer fields).
func samplePrivateMessage() mls.MLSMessage {
	return mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: &mls.PrivateMessage{
		GroupID: []byte("g"), Epoch: 3, ContentType: mls.ContentApplication,
		EncryptedSenderData: make([]byte, 28), Ciphertext: make([]byte, 40),
	}}
}

// sampleWelcome is a well-formed Welcome.
func sampleWelcome() mls.MLSMessage {
	return mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatWelcome, Welcome: &mls.Welcome{
		CipherSuite: mls.X25519AES128GCMSHA256Ed25519, EncryptedGroupInfo: make([]byte, 64),
	}}
}

func mustMarshal(m mls.MLSMessage) []byte {
	b, err := wire.Marshal(&m)
	if err != nil {
		panic(err)
	}
	return b
}

var (
	mlsVectorsOnce sync.Once
	mlsVectors     map[string]string
)

// mlsVector returns a field of the first case of the official MLS
// messages.json vectors (testdata/mls at the repository root).
func mlsVector(field string) []byte {
	mlsVectorsOnce.Do(func() {
		path, err := testdir.Path("mls", "messages.json")
		if err != nil {
			panic(err)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			panic(err)
		}
		var cases []map[string]string
		if err := json.Unmarshal(data, &cases); err != nil {
			panic(err)
		}
		mlsVectors = cases[0]
	})
	b, err := hex.DecodeString(mlsVectors[field])
	if err != nil || len(b) == 0 {
		panic("messages.json has no field " + field)
	}
	return b
}
