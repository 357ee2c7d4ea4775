// Package outboxbody finds the distinct message bodies of one outbox
// write, which both backends store once each: a message fanned out to N
// providers is N outbox rows that reference one body.
package outboxbody

import (
	"bytes"
	"hash/maphash"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// Distinct returns the distinct Message bytes of msgs, in the order of
// their first use, and for each message the index of its body there.
// Bodies are compared within msgs only (hashed with a seed of this call,
// then compared byte for byte), never against what an earlier write
// stored. The bodies are msgs' own slices, not copies.
func Distinct(msgs []store.OutboxMessage) (bodies [][]byte, bodyOf []int) {
	bodyOf = make([]int, len(msgs))
	if len(msgs) == 1 {
		return [][]byte{msgs[0].Message}, bodyOf
	}
	seed := maphash.MakeSeed()
	byHash := make(map[uint64][]int, len(msgs))
	for i, m := range msgs {
		h := maphash.Bytes(seed, m.Message)
		found := -1
		for _, b := range byHash[h] {
			if bytes.Equal(bodies[b], m.Message) {
				found = b
				break
			}
		}
		if found < 0 {
			found = len(bodies)
			bodies = append(bodies, m.Message)
			byHash[h] = append(byHash[h], found)
		}
		bodyOf[i] = found
	}
	return bodies, bodyOf
}
