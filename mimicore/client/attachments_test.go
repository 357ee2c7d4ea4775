package client

import (
	"crypto/rand"
	"io"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestKeptAttachmentsPerSender: alice uploads an attachment (its secret
// kept), then bob sends 16 messages of 16 references each; after bob's
// commit alice still opens her own attachment. With only the bound on
// all secrets (256), bob's 256 pushed alice's out and her attachment was
// taken for the new epoch, which cannot open it.
func TestKeptAttachmentsPerSender(t *testing.T) {
	alice, bob, gid, _ := pair(t)
	var stored []byte
	mux := http.NewServeMux()
	mux.HandleFunc("/attachment_upload", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rest := cryptobyte.String(body)
		var req moh.DSRequest
		if !req.UnmarshalWire(&rest) || req.Body.Type != moh.AttachmentUpload {
			http.Error(w, "not an upload", http.StatusBadRequest)
			return
		}
		stored = []byte(rest)
		writeOK(w, &moh.DSResponse{Type: moh.ResponseAttachmentToken, Token: []byte("token")})
	})
	mux.HandleFunc("/attachment_download", func(w http.ResponseWriter, r *http.Request) {
		writeOK(w, &moh.DSResponse{Type: moh.ResponseAttachmentContent, Content: stored})
	})
	fakeGateway(t, alice, mux)
	ref, leaf, err := alice.PutAttachment(t.Context(), gid, []byte("alice's photo"))
	if err != nil {
		t.Fatal(err)
	}
	seq := uint64(0)
	for range maxKeptAttachments / maxReferencesPerMessage {
		var text strings.Builder
		for range maxReferencesPerMessage {
			r := attachment.Reference{Token: []byte{1}, Nonce: make([]byte, 32), Hash: make([]byte, 32)}
			rand.Read(r.Nonce)
			rand.Read(r.Hash)
			text.WriteString(r.String() + "\n")
		}
		seq++
		if ev, err := alice.process(t.Context(), queued(seq, gid, bob.URI(), protect(t, bob, gid, text.String()))); err != nil || ev.Kind != EventMessage {
			t.Fatalf("alice opening bob's message %d: %+v, %v", seq, ev, err)
		}
	}
	g, err := alice.loadGroup(gid)
	if err != nil {
		t.Fatal(err)
	}
	count := map[uint32]int{}
	for _, k := range g.attachments {
		count[k.sender]++
	}
	if count[1] > maxKeptPerSender || count[0] != 1 {
		t.Fatalf("kept secrets by sender: %v; want alice's 1 and at most %d of bob's", count, maxKeptPerSender)
	}
	bm, err := bob.member(gid)
	if err != nil {
		t.Fatal(err)
	}
	res, err := bm.Commit(nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	commit, err := wire.Marshal(res.Commit)
	if err != nil {
		t.Fatal(err)
	}
	seq++
	if ev, err := alice.process(t.Context(), queued(seq, gid, bob.URI(), commit)); err != nil || ev.Kind != EventCommit {
		t.Fatalf("alice applying bob's commit: %+v, %v", ev, err)
	}
	alice = reopen(t, alice)
	fakeGateway(t, alice, mux)
	if got, err := alice.GetAttachment(t.Context(), gid, leaf, ref); err != nil || string(got) != "alice's photo" {
		t.Fatalf("alice's GetAttachment of her own attachment after bob's 256 references = %q, %v", got, err)
	}
}

// TestAppendKept checks the bounds of the kept secrets: a sender's oldest
// go beyond maxKeptPerSender of its own, without touching the others';
// the oldest of all go beyond maxKeptAttachments.
func TestAppendKept(t *testing.T) {
	entry := func(sender uint32, i int) keptAttachment {
		return keptAttachment{sender: sender, nonce: []byte{byte(i), byte(i >> 8)}}
	}
	var list []keptAttachment
	for i := range 5 {
		list = appendKept(list, entry(0, i))
	}
	for i := range 3 * maxKeptPerSender {
		list = appendKept(list, entry(1, i))
	}
	if len(list) != 5+maxKeptPerSender {
		t.Fatalf("%d kept, want %d", len(list), 5+maxKeptPerSender)
	}
	for i, k := range list[:5] {
		if k.sender != 0 || k.nonce[0] != byte(i) {
			t.Fatalf("entry %d is %+v, want sender 0's entry %d", i, k, i)
		}
	}
	if first := list[5]; first.sender != 1 || int(first.nonce[0])|int(first.nonce[1])<<8 != 2*maxKeptPerSender {
		t.Fatalf("sender 1's oldest kept is %+v, want its entry %d", first, 2*maxKeptPerSender)
	}
	// Many senders: the total bound.
	for s := range uint32(maxKeptAttachments) {
		list = appendKept(list, entry(100+s, 0))
	}
	if len(list) != maxKeptAttachments || list[0].sender != 100 {
		t.Fatalf("%d kept, the oldest of sender %d; want %d, the oldest of sender 100", len(list), list[0].sender, maxKeptAttachments)
	}
}
