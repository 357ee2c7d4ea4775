//go:build !race

package sqlitestore

// raceEnabled reports whether the tests run with the race detector.
const raceEnabled = false
