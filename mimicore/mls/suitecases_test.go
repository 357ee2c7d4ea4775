package mls

import (
	"iter"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
)

// suiteField is the cipher_suite field of a vector case; embedding it lets
// supportedCases filter any case type.
type suiteField struct {
	CipherSuite CipherSuite `json:"cipher_suite"`
}

func (f suiteField) suite() CipherSuite { return f.CipherSuite }

// supportedCases yields the index and value of every case whose cipher
// suite this package implements, counting them in c.Run and the others
// (suites 4 and 6) in c.Skipped.
func supportedCases[T interface{ suite() CipherSuite }](c *vectors.Counter, cases []T) iter.Seq2[int, T] {
	return func(yield func(int, T) bool) {
		for i, tc := range cases {
			if !tc.suite().Supported() {
				c.Skipped++
				continue
			}
			c.Run++
			if !yield(i, tc) {
				return
			}
		}
	}
}
