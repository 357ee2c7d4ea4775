package outboxbody

import (
	"slices"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

func TestDistinct(t *testing.T) {
	big := make([]byte, 1<<20)
	bigCopy := slices.Clone(big)
	bigOther := slices.Clone(big)
	bigOther[len(bigOther)-1] = 1
	for _, tc := range []struct {
		name       string
		msgs       []string
		wantBodies []string
		wantOf     []int
	}{
		{"one", []string{"a"}, []string{"a"}, []int{0}},
		{"all equal", []string{"a", "a", "a"}, []string{"a"}, []int{0, 0, 0}},
		{"all distinct", []string{"a", "b", "c"}, []string{"a", "b", "c"}, []int{0, 1, 2}},
		{"interleaved", []string{"a", "b", "a", "c", "b"}, []string{"a", "b", "c"}, []int{0, 1, 0, 2, 1}},
		{"prefix", []string{"ab", "a", "ab"}, []string{"ab", "a"}, []int{0, 1, 0}},
		{"empty and not", []string{"", "x", ""}, []string{"", "x"}, []int{0, 1, 0}},
		{"large, equal copies and one differing in its last byte", []string{string(big), string(bigCopy), string(bigOther)},
			[]string{string(big), string(bigOther)}, []int{0, 0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs := make([]store.OutboxMessage, len(tc.msgs))
			for i, m := range tc.msgs {
				msgs[i] = store.OutboxMessage{Destination: "d.example", Message: []byte(m)}
			}
			bodies, of := Distinct(msgs)
			got := make([]string, len(bodies))
			for i, b := range bodies {
				got[i] = string(b)
			}
			if !slices.Equal(got, tc.wantBodies) || !slices.Equal(of, tc.wantOf) {
				t.Fatalf("Distinct: %d bodies, of %v; want %d bodies, of %v", len(got), of, len(tc.wantBodies), tc.wantOf)
			}
		})
	}
}
