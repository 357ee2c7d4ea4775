package check

import (
	"testing"
	"time"
)

func TestExpiryMillis(t *testing.T) {
	for _, c := range []struct {
		t    time.Time
		want int64
	}{
		{time.UnixMilli(1_000), 1_000},
		{time.Unix(1, int64(time.Millisecond)+1), 1_002},
		{time.Unix(1, int64(time.Millisecond)-1), 1_001},
		{time.Unix(-1, int64(time.Millisecond)/2), -999}, // before the epoch: still rounded up
		{time.UnixMilli(-5), -5},
	} {
		if got := ExpiryMillis(c.t); got != c.want {
			t.Errorf("ExpiryMillis(%v) = %d, want %d", c.t, got, c.want)
		}
		if got := ExpiryMillis(c.t); Time(got).Before(c.t) {
			t.Errorf("ExpiryMillis(%v) = %d ends before the expiry", c.t, got)
		}
		if got := Millis(c.t); Time(got).After(c.t) {
			t.Errorf("Millis(%v) = %d is after the time", c.t, got)
		}
	}
}
