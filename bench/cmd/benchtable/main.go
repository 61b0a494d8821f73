// Command benchtable turns the output of tapproxy's BenchmarkProxy into a
// Markdown table, with each variant's time per request as a ratio to the
// bare ReverseProxy's in the same mode and size. With -count, each figure
// is the median of the runs:
//
//	go test -run '^$' -bench BenchmarkProxy -benchmem . | go run ./bench/cmd/benchtable
//
// Lines that are not benchmark results are ignored.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

// result is one line of go test -bench output.
type result struct {
	mode, size, variant string
	metrics             map[string]float64 // by unit: ns/op, MB/s, B/op, allocs/op
}

// parse reads "BenchmarkProxy/mode=serial/size=1KiB/variant=bare-2  N  123 ns/op ...".
func parse(line string) (result, bool) {
	fields := strings.Fields(line)
	if len(fields) < 4 || !strings.HasPrefix(fields[0], "BenchmarkProxy/") {
		return result{}, false
	}
	r := result{metrics: map[string]float64{}}
	name := fields[0]
	if i := strings.LastIndexByte(name, '-'); i > 0 {
		name = name[:i] // the GOMAXPROCS suffix
	}
	for _, part := range strings.Split(name, "/")[1:] {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "mode":
			r.mode = v
		case "size":
			r.size = v
		case "variant":
			r.variant = v
		}
	}
	for i := 2; i+1 < len(fields); i += 2 {
		v, err := strconv.ParseFloat(fields[i], 64)
		if err != nil {
			return result{}, false
		}
		r.metrics[fields[i+1]] = v
	}
	return r, r.mode != "" && r.size != "" && r.variant != "" && r.metrics["ns/op"] > 0
}

func run(in io.Reader, out io.Writer) error {
	var (
		order []string                // names, as first seen
		runs  = map[string][]result{} // by name
	)
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if r, ok := parse(sc.Text()); ok {
			name := r.mode + "/" + r.size + "/" + r.variant
			if _, seen := runs[name]; !seen {
				order = append(order, name)
			}
			runs[name] = append(runs[name], r)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(order) == 0 {
		return fmt.Errorf("no BenchmarkProxy results in the input")
	}
	results := make([]result, 0, len(order))
	bare := map[string]float64{} // ns/op by mode and size
	for _, name := range order {
		r := median(runs[name])
		results = append(results, r)
		if r.variant == "bare" {
			bare[r.mode+"/"+r.size] = r.metrics["ns/op"]
		}
	}
	fmt.Fprintln(out, "| mode | size | variant | µs/op | x bare | MB/s | B/op | allocs/op |")
	fmt.Fprintln(out, "| --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, r := range results {
		ratio := "-"
		if b := bare[r.mode+"/"+r.size]; b > 0 {
			ratio = fmt.Sprintf("%.2fx", r.metrics["ns/op"]/b)
		}
		fmt.Fprintf(out, "| %s | %s | %s | %.1f | %s | %.0f | %.0f | %.0f |\n", r.mode, r.size, r.variant,
			r.metrics["ns/op"]/1e3, ratio, r.metrics["MB/s"], r.metrics["B/op"], r.metrics["allocs/op"])
	}
	return nil
}

// median returns one result whose every figure is the median of the runs'
// (for an even count, the upper of the middle two).
func median(runs []result) result {
	m := result{mode: runs[0].mode, size: runs[0].size, variant: runs[0].variant, metrics: map[string]float64{}}
	for unit := range runs[0].metrics {
		var vs []float64
		for _, r := range runs {
			vs = append(vs, r.metrics[unit])
		}
		slices.Sort(vs)
		m.metrics[unit] = vs[len(vs)/2]
	}
	return m
}
