//go:build !race

package har_test

const raceEnabled = false
