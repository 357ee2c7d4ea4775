package mls

import (
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
)

func TestTreeMathVectors(t *testing.T) {
	var cases []struct {
		NLeaves uint32    `json:"n_leaves"`
		NNodes  uint32    `json:"n_nodes"`
		Root    uint32    `json:"root"`
		Left    []*uint32 `json:"left"`
		Right   []*uint32 `json:"right"`
		Parent  []*uint32 `json:"parent"`
		Sibling []*uint32 `json:"sibling"`
	}
	if err := vectors.Load("tree-math.json", &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	check := func(i int, what string, got uint32, ok bool, want *uint32) {
		t.Helper()
		if ok != (want != nil) || (ok && got != *want) {
			t.Errorf("node %d %s: got %d (present %v), want %v", i, what, got, ok, want)
		}
	}
	for _, tc := range cases {
		if got := nodeWidth(tc.NLeaves); got != tc.NNodes {
			t.Errorf("n_leaves %d: width %d, want %d", tc.NLeaves, got, tc.NNodes)
		}
		r := root(tc.NLeaves)
		if r != tc.Root {
			t.Errorf("n_leaves %d: root %d, want %d", tc.NLeaves, r, tc.Root)
		}
		for i := range tc.NNodes {
			isParent := level(i) > 0
			var l, rt uint32
			if isParent {
				l, rt = left(i), right(i)
			}
			check(int(i), "left", l, isParent, tc.Left[i])
			check(int(i), "right", rt, isParent, tc.Right[i])
			var p, s uint32
			if i != r {
				p, s = parent(i), sibling(i)
			}
			check(int(i), "parent", p, i != r, tc.Parent[i])
			check(int(i), "sibling", s, i != r, tc.Sibling[i])
		}
		c.Run++
	}
	c.Report(t, "tree-math.json")
}
