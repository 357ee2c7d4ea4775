//go:build !race

package redisrl

const raceEnabled = false
