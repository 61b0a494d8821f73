// Package e2e holds end-to-end tests of tapproxy against real protocol
// stacks (gRPC) whose dependencies the core module must not carry. It has
// no API: run it with go test.
package e2e
