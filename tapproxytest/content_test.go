package tapproxytest

import (
	"bytes"
	"compress/flate"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tapproxy/tapproxy/har"
)

func TestContentRoundTrip(t *testing.T) {
	plain := []byte("hello, hello, hello")
	tests := []struct {
		name    string
		codings string
	}{
		{"gzip", "gzip"},
		{"x-gzip", "x-gzip"},
		{"deflate", "deflate"},
		{"two codings", "deflate, gzip"},
		{"identity", "identity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			codings := appendCodings(nil, tt.codings)
			raw, err := encode(plain, codings)
			require.NoError(t, err)
			var c har.Content
			storeContent(&c, http.Header{"Content-Encoding": {tt.codings}}, raw, true)
			assert.Equal(t, string(plain), c.Text, "stored decoded")
			assert.Empty(t, c.Comment)
			assert.EqualValues(t, len(plain), c.Size)

			again, err := encode([]byte(c.Text), codings)
			require.NoError(t, err)
			back, err := decode(again, codings)
			require.NoError(t, err)
			assert.Equal(t, plain, back)
		})
	}
}

func TestContentRawDeflate(t *testing.T) {
	var b bytes.Buffer
	w, err := flate.NewWriter(&b, flate.DefaultCompression)
	require.NoError(t, err)
	w.Write([]byte("raw deflate, as some servers send"))
	require.NoError(t, w.Close())
	got, err := decode(b.Bytes(), []string{"deflate"})
	require.NoError(t, err)
	assert.Equal(t, "raw deflate, as some servers send", string(got))
}

func TestContentKeptRaw(t *testing.T) {
	tests := []struct {
		name     string
		header   http.Header
		raw      []byte
		complete bool
	}{
		{"unknown coding", http.Header{"Content-Encoding": {"br"}}, []byte{1, 2, 3}, true},
		{"corrupt gzip", http.Header{"Content-Encoding": {"gzip"}}, []byte("not gzip"), true},
		{"incomplete body", http.Header{"Content-Encoding": {"gzip"}}, []byte{0x1f, 0x8b}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c har.Content
			storeContent(&c, tt.header, tt.raw, tt.complete)
			assert.Equal(t, "base64", c.Encoding)
			assert.Equal(t, rawComment, c.Comment)
			back, err := textBytes(c.Text, c.Encoding)
			require.NoError(t, err)
			assert.Equal(t, tt.raw, back)
		})
	}
}

func TestContentText(t *testing.T) {
	var c har.Content
	storeContent(&c, http.Header{}, []byte{0xff, 0x00, 0x80}, true)
	assert.Equal(t, "base64", c.Encoding, "bytes that are not UTF-8")
	storeContent(&c, http.Header{}, []byte("plain é"), true)
	assert.Equal(t, "plain é", c.Text)
	assert.Empty(t, c.Encoding)
}
