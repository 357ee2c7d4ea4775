package moh

import (
	"errors"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

func TestAnswerCode(t *testing.T) {
	ok, err := wire.Marshal(&DSResponse{Type: ResponseGroupID, GroupID: make([]byte, 16)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		answer []byte
		want   Code
	}{
		{"success", ok, 0},
		{"ok", []byte{0, 1, byte(ResponseOK)}, 0},
		{"coded error", ErrorAnswer(Errorf(CodeStaleEpoch, "epoch moved on")), CodeStaleEpoch},
		{"uncoded error", ErrorAnswer(errors.New("disk on fire")), CodeBackendUnavailable},
		{"truncated header", []byte{0, 1}, CodeBackendUnavailable},
		{"truncated code", []byte{0, 1, byte(ResponseError), 0}, CodeBackendUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := AnswerCode(tc.answer); got != tc.want {
				t.Fatalf("AnswerCode = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestErrorAnswerHidesCause(t *testing.T) {
	var r DSResponse
	if err := wire.Unmarshal(ErrorAnswer(errors.New("open /var/lib/secret: permission denied")), &r, "DSResponse"); err != nil {
		t.Fatal(err)
	}
	if r.Type != ResponseError || r.Error.Code != CodeBackendUnavailable || string(r.Error.Message) != "internal error" {
		t.Fatalf("answer = %+v, want backend_unavailable \"internal error\"", r)
	}
}
