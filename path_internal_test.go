package tapproxy

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestRemoveDotSegments(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"/", "/", true},
		{"/./", "/", true},
		{"/.", "/", true},
		{"/../", "", false},
		{"/..", "", false},
		{"/a/..", "/", true},
		{"/a/b/..", "/a/", true},
		{"/a/b/.", "/a/b/", true},
		{"/a//b/../c", "/a//c", true},
		{"/a/./b", "/a/b", true},
		{"/a/%2e%2E/b", "/b", true},
		{"/a/.%2e/b", "/b", true},
		{"/a/%2e/b", "/a/b", true},
		{"/api/..%2fsecret", "/secret", true},
		{"/..%2fsecret", "", false},
		{"/api%2F..%2Fsecret", "/secret", true},
		{"/x/a%2f..%2fb", "/x/b", true},
		{"/a/..%5c..%5cb", "", false},
		{"/a/b%2fc", "/a/b%2fc", true},
		{"/%7Eu/x/../%41", "/%7Eu/%41", true},
		{"/a/...", "/a/...", true},
		{"/a/..%2f", "/", true},
		{"/a%2f..", "/", true},
		{"/a/b/../../..", "", false},
		{"/a\\..\\b", "/b", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := removeDotSegments(tt.in)
			assert.Equal(t, tt.ok, ok)
			if tt.ok {
				assert.Equal(t, tt.want, got)
			}
		})
	}
}
