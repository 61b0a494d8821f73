package tapproxy_test

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy"
)

func compress(tb testing.TB, coding string, data []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	switch coding {
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "deflate":
		w = zlib.NewWriter(&buf)
	case "raw-deflate":
		fw, err := flate.NewWriter(&buf, flate.DefaultCompression)
		require.NoError(tb, err)
		w = fw
	}
	_, err := w.Write(data)
	require.NoError(tb, err)
	require.NoError(tb, w.Close())
	return buf.Bytes()
}

// decoded is what an observer got from DecodedBody.
type decoded struct {
	data []byte
	err  error
	raw  []byte
}

// serveEncoded proxies one response with the given Content-Encoding and
// returns what the client got and what DecodedBody gave the observer.
func serveEncoded(t *testing.T, encoding string, body []byte, opts ...tapproxy.Option) (client []byte, got decoded) {
	t.Helper()
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if encoding != "" {
			w.Header().Set("Content-Encoding", encoding)
		}
		w.Write(body)
	})
	ch := make(chan decoded, 1)
	opts = append(opts, tapproxy.WithObserver(tapproxy.ObserverFunc(func(ctx context.Context, ex *tapproxy.Exchange) {
		var d decoded
		d.data, d.err = io.ReadAll(ex.DecodedBody())
		d.raw, _ = io.ReadAll(ex.Body())
		ch <- d
	})))
	front := newFrontend(t, up.URL, opts...)
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	_, client = get(t, &http.Client{Transport: tr}, front.URL)
	return client, <-ch
}

func TestDecodedBody(t *testing.T) {
	text := []byte(strings.Repeat("The quick brown fox jumps over the lazy dog. ", 200)) // 9,000 bytes
	tests := []struct {
		name     string
		encoding string
		body     []byte
		opts     []tapproxy.Option
		want     []byte
		wantErr  error  // matched with errors.Is
		errText  string // or a substring
	}{
		{name: "identity", body: text, want: text},
		{name: "gzip", encoding: "gzip", body: compress(t, "gzip", text), want: text},
		{name: "x-gzip", encoding: "x-gzip", body: compress(t, "gzip", text), want: text},
		{name: "deflate (zlib)", encoding: "deflate", body: compress(t, "deflate", text), want: text},
		{name: "raw deflate", encoding: "deflate", body: compress(t, "raw-deflate", text), want: text},
		{name: "stacked codings", encoding: "deflate, gzip", body: compress(t, "gzip", compress(t, "deflate", text)), want: text},
		{name: "registered decoder", encoding: "reverse", body: reverse(text), want: text,
			opts: []tapproxy.Option{tapproxy.WithDecoder("Reverse", func(r io.Reader) (io.Reader, error) {
				b, err := io.ReadAll(r)
				return bytes.NewReader(reverse(b)), err
			})}},
		{name: "unknown coding", encoding: "br", body: text, errText: `cannot decode content coding "br"`},
		{name: "corrupt stream", encoding: "gzip", body: []byte("not gzip at all"), errText: "decoding gzip"},
		{name: "truncated capture decodes as far as it goes", encoding: "gzip", body: compress(t, "gzip", text),
			opts: []tapproxy.Option{tapproxy.WithCaptureLimit(100)}, wantErr: tapproxy.ErrCaptureTruncated},
		{name: "truncated identity says so", body: text,
			opts: []tapproxy.Option{tapproxy.WithCaptureLimit(100)}, want: text[:100], wantErr: tapproxy.ErrCaptureTruncated},
		{name: "decode limit stops a bomb", encoding: "gzip", body: compress(t, "gzip", make([]byte, 8<<20)),
			opts: []tapproxy.Option{tapproxy.WithDecodeLimit(64 << 10)}, want: make([]byte, 64<<10), wantErr: tapproxy.ErrDecodeLimit},
		{name: "a body of exactly the limit is whole", encoding: "gzip", body: compress(t, "gzip", text),
			opts: []tapproxy.Option{tapproxy.WithDecodeLimit(int64(len(text)))}, want: text},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, got := serveEncoded(t, tt.encoding, tt.body, tt.opts...)
			assert.Equal(t, tt.body, client, "the client gets the bytes as the upstream sent them")
			switch {
			case tt.wantErr != nil:
				assert.ErrorIs(t, got.err, tt.wantErr)
			case tt.errText != "":
				require.Error(t, got.err)
				assert.Contains(t, got.err.Error(), tt.errText)
			default:
				assert.NoError(t, got.err)
			}
			if tt.want != nil {
				assert.Equal(t, tt.want, got.data)
			}
			if tt.name == "truncated capture decodes as far as it goes" {
				assert.NotEmpty(t, got.data, "the decodable prefix is returned")
				assert.Equal(t, text[:len(got.data)], got.data)
			}
			assert.Equal(t, tt.body[:min(len(tt.body), len(got.raw))], got.raw, "Body stays the raw capture")
		})
	}
}

func TestNewRejectsNegativeDecodeLimit(t *testing.T) {
	_, err := tapproxy.New(mustParse(t, "http://a"), tapproxy.WithDecodeLimit(-1))
	require.ErrorContains(t, err, "tapproxy: decode limit -1 is negative")
}

func reverse(b []byte) []byte {
	r := make([]byte, len(b))
	for i, c := range b {
		r[len(b)-1-i] = c
	}
	return r
}
