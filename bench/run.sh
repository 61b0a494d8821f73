#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: the load comparison with its budget verdicts,
# then the Go benchmarks, all from one run on this machine. Arguments go to
# loadcompare (for example -rounds 3 -duration 1s); BENCHTIME and
# BENCHCOUNT set the Go benchmarks' -benchtime and -count (default 500ms, 3:
# each figure is the median of 3). Takes about 6 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

benchtime="${BENCHTIME:-500ms}"
count="${BENCHCOUNT:-3}"
loadavg=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
out=BENCHMARKS.md
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

{
	cat <<'HEAD'
# Benchmarks

Everything on this page comes from one run of one command, from the
repository root:

    bench/run.sh

Observing must cost almost nothing next to a bare proxy. Absolute numbers on
a shared machine mean little, so every figure is compared with the bare
`httputil.ReverseProxy` (same tuned transport, pooled copy buffers) measured
in the same run. `go run ./bench/cmd/loadcompare` alone prints the load
comparison and the budget verdicts (`-strict` makes a FAIL exit 1; `-h`
lists the flags for rounds, durations and sizes).

## The budget

| Figure | Budget |
| --- | --- |
| req/s at 1 KiB, observer + capture + metrics on | >= 0.90 x the bare tuned proxy, and >= 2 x `NewSingleHostReverseProxy` with defaults |
| allocs/op | <= bare + 12 |
| 1 GiB response, 64 KiB capture | proxy heap growth <= 16 MiB; time to first byte <= 1.2 x bare |
| req/s at 1 KiB, every exchange recorded into a `har.Recorder` with `WithAsyncObservers` (variant `har`) | >= 0.85 x the same proxy without it (variant `tapproxy`) |
| peak RSS at 2,000 held streams, observers that read no body | <= 1.15 x bare |
| peak RSS at 2,000 held streams, one observer, defaults | <= 2 x bare |
| req/s at 512 connections | >= 0.95 x bare |
| req/s of `New` (variant `tapproxy`), and of `NewBalanced` over 3 upstreams (variant `balanced`) | >= 0.95 x bare, and >= 0.95 x `New` |
| picking an upstream (`BenchmarkPick`) | 0 allocs, < 100 ns, for 3 and 100 upstreams |

`go test` holds what is deterministic: `TestAllocsWithinBudgetOfBareProxy`
(allocations per request against an in-memory upstream) and
`TestCaptureBudgetBoundsConcurrentCaptures` (1000 concurrent slow responses
with 1 MiB captures under a 32 MiB capture budget keep the heap bounded).

HEAD
	echo "Load average of the machine when the run started: $loadavg (on $(nproc) CPUs):"
	echo "other work was sharing the machine if it is well above 0."
	echo
	go run ./bench/cmd/loadcompare -markdown -memory "$@"
	cat <<HEAD

### Go benchmarks

Command: \`go test -run '^$' -bench BenchmarkProxy -benchmem -benchtime $benchtime -count $count .\`
(client, proxy and upstream in one process over loopback; every variant,
size and mode in the same run; each figure the median of the $count runs).
\`x bare\` compares time per request with the bare ReverseProxy of the same
mode and size. These in-process figures swing more than the load
comparison's, since client, proxy and upstream share the same two cores.

HEAD
	go test -run '^$' -bench BenchmarkProxy -benchmem -benchtime "$benchtime" -count "$count" . | go run ./bench/cmd/benchtable
	cat <<HEAD

### Picking an upstream

Command: \`go test -run '^$' -bench BenchmarkPick -benchmem -benchtime $benchtime -count $count .\`
(the per-request work of a pick: choosing among the candidates, counting
the upstream in flight and releasing it; budget: no allocation and under
100 ns, for 3 and for 100 upstreams; \`TestPickAllocs\` holds the
allocations in CI).

\`\`\`
HEAD
	go test -run '^$' -bench BenchmarkPick -benchmem -benchtime "$benchtime" -count "$count" . | grep '^BenchmarkPick'
	echo '```'
} >"$tmp"
chmod 644 "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out"
