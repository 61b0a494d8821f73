// Package observability holds no code: its module carries the tests of the
// Grafana dashboard and the Prometheus rules beside it, which run the
// PromQL they contain through Prometheus's own parser and a real Prometheus
// against examples/prometheus. It is a module of its own so that the
// parser's dependencies stay out of tapproxy's go.mod.
package observability
