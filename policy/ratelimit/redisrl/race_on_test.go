//go:build race

package redisrl

const raceEnabled = true
