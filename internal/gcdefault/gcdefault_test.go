package gcdefault

import (
	"runtime/debug"
	"testing"
)

// gcPercent reads the current GOGC percentage (SetGCPercent returns the
// previous one) and leaves it as it was.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

func TestApply(t *testing.T) {
	orig := gcPercent()
	t.Cleanup(func() { debug.SetGCPercent(orig) })
	for _, tc := range []struct {
		name    string
		env     map[string]string
		start   int
		changed bool
		want    int
	}{
		{"unset", map[string]string{}, 100, true, Percent},
		{"set", map[string]string{"GOGC": "200"}, 200, false, 200},
		{"set to off", map[string]string{"GOGC": "off"}, -1, false, -1},
		{"set empty", map[string]string{"GOGC": ""}, 100, false, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// start stands for what the runtime read from GOGC.
			debug.SetGCPercent(tc.start)
			lookup := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
			if got := apply(lookup); got != tc.changed {
				t.Errorf("apply = %v, want %v", got, tc.changed)
			}
			if got := gcPercent(); got != tc.want {
				t.Errorf("GOGC percentage %d, want %d", got, tc.want)
			}
		})
	}
}
