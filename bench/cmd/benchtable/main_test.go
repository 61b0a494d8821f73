package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestRun(t *testing.T) {
	in := `goos: linux
BenchmarkProxy/mode=serial/size=1KiB/variant=bare-2   	 200	 100000 ns/op	  10.24 MB/s	 12255 B/op	 139 allocs/op
BenchmarkProxy/mode=serial/size=1KiB/variant=metrics-2	 200	 110000 ns/op	   9.31 MB/s	 12583 B/op	 142 allocs/op
BenchmarkProxy/mode=serial/size=1KiB/variant=direct	 200	  50000 ns/op
BenchmarkOther-2 	 1 	 5 ns/op
PASS
`
	var out bytes.Buffer
	require.NoError(t, run(strings.NewReader(in), &out))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 5, out.String())
	assert.Equal(t, "| serial | 1KiB | bare | 100.0 | 1.00x | 10 | 12255 | 139 |", lines[2])
	assert.Equal(t, "| serial | 1KiB | metrics | 110.0 | 1.10x | 9 | 12583 | 142 |", lines[3])
	assert.Equal(t, "| serial | 1KiB | direct | 50.0 | 0.50x | 0 | 0 | 0 |", lines[4])
}

func TestRunTakesMedians(t *testing.T) {
	in := `BenchmarkProxy/mode=parallel/size=1MiB/variant=bare-2 	 10	 300 ns/op	 5 allocs/op
BenchmarkProxy/mode=parallel/size=1MiB/variant=bare-2 	 10	 100 ns/op	 9 allocs/op
BenchmarkProxy/mode=parallel/size=1MiB/variant=bare-2 	 10	 200 ns/op	 7 allocs/op
`
	var out bytes.Buffer
	require.NoError(t, run(strings.NewReader(in), &out))
	assert.Contains(t, out.String(), "| parallel | 1MiB | bare | 0.2 | 1.00x | 0 | 0 | 7 |")
}

func TestRunWithoutResults(t *testing.T) {
	require.Error(t, run(strings.NewReader("PASS\n"), &bytes.Buffer{}))
}
