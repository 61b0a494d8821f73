package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// The budget, as published.
const (
	minRatioToBare   = 0.90
	minRatioToStdlib = 2.0
	maxExtraAllocs   = 12
	maxHeapGrowth    = 16 << 20
	maxTTFBRatio     = 1.2
	minRatioHAR      = 0.85 // har against tapproxy
	// tapproxy with no observer against bare, and a pool of three against
	// one upstream: what routing through New and NewBalanced costs.
	minNewToBare     = 0.95
	minBalancedToNew = 0.95
)

// table prints as aligned text or as Markdown.
type table struct {
	head []string
	rows [][]string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) print(w io.Writer, markdown bool) {
	if markdown {
		fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(t.head, " | "), strings.Repeat(" --- |", len(t.head)))
		for _, r := range t.rows {
			fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
		}
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(t.head, "\t"))
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

// print writes the report and reports whether a budget line failed.
func (r *report) print(w io.Writer, md bool) (failed bool) {
	if md {
		fmt.Fprint(w, "### Load comparison\n\n")
	}
	fmt.Fprintf(w, "Machine: %d CPUs, %s; %s/%s, %s.  \n", runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	fmt.Fprintf(w, "Date: %s; the run took %s.  \n", r.start.UTC().Format(time.RFC3339), r.took.Round(time.Second))
	fmt.Fprintf(w, "Command: `go run ./bench/cmd/loadcompare%s` (from the repository root).\n", argString(r.cfg.args))

	fmt.Fprintln(w)
	fmt.Fprintf(w, "Load: %d-byte responses, %d connections, %d alternating rounds of %s per variant; the upstream, each proxy and the load generator are separate processes on 127.0.0.1.\n\n",
		r.cfg.size, r.cfg.conns, r.cfg.rounds, r.cfg.duration)
	lt := table{head: []string{"variant", "req/s", "p50", "p99", "x bare", "allocs/req", "errors"}}
	bareRPS := 0.0
	if b := r.load[bare]; b != nil {
		bareRPS = b.rps()
	}
	for _, v := range r.variants {
		res := r.load[v]
		allocs := "-"
		if v != direct {
			allocs = fmt.Sprintf("%.1f", res.allocsPerReq())
		}
		lt.add(v, fmt.Sprintf("%.0f", res.rps()), fmtDur(res.quantile(0.50)), fmtDur(res.quantile(0.99)),
			ratio(res.rps(), bareRPS), allocs, fmt.Sprint(res.errs))
	}
	lt.print(w, md)

	if r.cfg.big > 0 {
		fmt.Fprintf(w, "\nLarge response: %s without a length, the upstream pausing %s after its first KiB; each proxy in a fresh process; time to first byte is the median of %d requests (naive: 1), taken round-robin.\n\n",
			fmtBytes(r.cfg.big), r.cfg.pause, r.cfg.probes)
		bt := table{head: []string{"variant", "first byte", "x bare", "whole body", "MB/s after the pause", "heap growth", "peak RSS"}}
		var bareTTFB time.Duration
		if b := r.big[bare]; b != nil {
			bareTTFB = b.medianTTFB()
		}
		for _, v := range r.variants {
			res := r.big[v]
			heap, rss := "-", "-"
			if res.heapGrowth >= 0 {
				heap, rss = fmtBytes(res.heapGrowth), fmtBytes(res.peakRSS)
			}
			bt.add(v, fmtDur(res.medianTTFB()), ratio(float64(res.medianTTFB()), float64(bareTTFB)),
				fmtDur(res.duration), fmt.Sprintf("%.0f", float64(r.cfg.big)/1e6/(res.duration-r.cfg.pause).Seconds()), heap, rss)
		}
		bt.print(w, md)
	}

	fmt.Fprintln(w)
	dt := table{head: []string{"variant", "what it is"}}
	for _, v := range r.variants {
		dt.add(v, descriptions[v])
	}
	dt.print(w, md)

	subject := full
	if r.load[full] == nil {
		subject = "observer"
	}
	fmt.Fprintf(w, "\nBudget, for variant %q (%s):\n\n", subject, descriptions[subject])
	var lines []string
	check := func(ok, measured bool, format string, args ...any) {
		verdict := "PASS"
		switch {
		case !measured:
			verdict = "SKIP"
		case !ok:
			verdict, failed = "FAIL", true
		}
		line := verdict + "  " + fmt.Sprintf(format, args...)
		if md {
			line = "- **" + verdict + "** " + fmt.Sprintf(format, args...)
		}
		lines = append(lines, line)
	}
	s, b, std := r.load[subject], r.load[bare], r.load[stdlib]
	if s != nil && b != nil {
		check(s.rps() >= minRatioToBare*b.rps(), true, "req/s at %d bytes >= %.2f x bare: %.0f vs %.0f, %s",
			r.cfg.size, minRatioToBare, s.rps(), b.rps(), budgetRatio(s.rps(), b.rps()))
		check(s.allocsPerReq() <= b.allocsPerReq()+maxExtraAllocs, true, "allocs/req <= bare + %d: %.1f vs %.1f + %d",
			maxExtraAllocs, s.allocsPerReq(), b.allocsPerReq(), maxExtraAllocs)
	} else {
		check(false, false, "req/s and allocs/req against bare: variant missing")
	}
	if s != nil && std != nil {
		check(s.rps() >= minRatioToStdlib*std.rps(), true, "req/s at %d bytes >= %.0f x stdlib: %.0f vs %.0f, %s",
			r.cfg.size, minRatioToStdlib, s.rps(), std.rps(), budgetRatio(s.rps(), std.rps()))
	} else {
		check(false, false, "req/s against stdlib: variant missing")
	}
	if sb, bb := r.big[subject], r.big[bare]; sb != nil && bb != nil {
		check(sb.heapGrowth <= maxHeapGrowth, true, "%s response, 64 KiB capture: heap growth <= %s: %s",
			fmtBytes(r.cfg.big), fmtBytes(maxHeapGrowth), fmtBytes(sb.heapGrowth))
		check(float64(sb.medianTTFB()) <= maxTTFBRatio*float64(bb.medianTTFB()), true,
			"%s response: time to first byte <= %.1f x bare: %s vs %s, %s", fmtBytes(r.cfg.big), maxTTFBRatio,
			fmtDur(sb.medianTTFB()), fmtDur(bb.medianTTFB()), budgetRatio(float64(sb.medianTTFB()), float64(bb.medianTTFB())))
	} else {
		check(false, false, "large response: not run")
	}
	if h, t := r.load[harVariant], r.load["tapproxy"]; h != nil && t != nil {
		check(h.rps() >= minRatioHAR*t.rps(), true, "req/s with every exchange recorded into a har.Recorder (async) >= %.2f x tapproxy: %.0f vs %.0f, %s",
			minRatioHAR, h.rps(), t.rps(), budgetRatio(h.rps(), t.rps()))
	} else {
		check(false, false, "har against tapproxy: variant missing")
	}
	if t := r.load["tapproxy"]; t != nil && b != nil {
		check(t.rps() >= minNewToBare*b.rps(), true, "New, no observer: req/s >= %.2f x bare: %.0f vs %.0f, %s",
			minNewToBare, t.rps(), b.rps(), budgetRatio(t.rps(), b.rps()))
	} else {
		check(false, false, "New against bare: variant missing")
	}
	if nb, t := r.load[balanced], r.load["tapproxy"]; nb != nil && t != nil {
		check(nb.rps() >= minBalancedToNew*t.rps(), true, "NewBalanced over %d: req/s >= %.2f x New over 1: %.0f vs %.0f, %s",
			poolSize, minBalancedToNew, nb.rps(), t.rps(), budgetRatio(nb.rps(), t.rps()))
	} else {
		check(false, false, "NewBalanced against New: variant missing")
	}
	sep := "\n"
	fmt.Fprintln(w, strings.Join(lines, sep))
	return failed
}

func ratio(a, b float64) string { return ratioPrec(a, b, 2) }

// budgetRatio has one more digit than ratio, so that a line judged
// against 0.90 never reads 0.90x when it fails.
func budgetRatio(a, b float64) string { return ratioPrec(a, b, 3) }

func ratioPrec(a, b float64, prec int) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.*fx", prec, a/b)
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func argString(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return " " + strings.Join(args, " ")
}
