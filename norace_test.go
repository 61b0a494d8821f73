//go:build !race

package tapproxy

const raceEnabled = false
