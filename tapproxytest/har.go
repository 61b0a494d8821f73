package tapproxytest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"unicode"

	"github.com/tapproxy/tapproxy/har"
)

// WithHAROnFailure makes the server write its recording, as a HAR 1.2 file,
// to dir/<name>.har when the test fails, and log the file's path: open it in
// a browser's network panel to see what the code under test sent and got.
// <name> is tb.Name() with every character other than letters, digits, '-',
// '_' and '.' replaced by '_'. The directory is created if missing. The file
// is written after the server closed, so it holds every exchange the
// recorder kept; credentials in it are redacted (see [WithUnredactedHAR]).
// A failure to write the file is logged.
//
// By default no file is written. An empty dir keeps the default. The last
// call wins.
func WithHAROnFailure(dir string) Option {
	return optionFunc(func(c *config) { c.harDir = dir })
}

// WithUnredactedHAR keeps credentials in the HAR files the server writes
// (see [Recorder.WriteHAR] and [WithHAROnFailure]). By default they are
// redacted as [tapproxy.Proxy] redacts them for observers, because such
// files are shared: CI uploads them as artifacts. The in-memory recording
// keeps credentials either way. Repeating it has no further effect.
func WithUnredactedHAR() Option {
	return optionFunc(func(c *config) { c.harCredentials = true })
}

// WriteHAR writes the kept exchanges to w as one HAR 1.2 document, for a
// browser's network panel or any HAR viewer. Entries are in the order the
// requests arrived. Credentials are redacted unless the server was started
// with [WithUnredactedHAR]; the recording itself is not changed.
func (r *Recorder) WriteHAR(w io.Writer) error {
	exs := r.Exchanges()
	h := har.HAR{Log: har.Log{
		Version: har.Version,
		Creator: har.DefaultCreator,
		Pages:   []har.Page{},
		Entries: make([]har.Entry, len(exs)),
	}}
	for i, ex := range exs {
		h.Log.Entries[i] = entryOf(ex, !r.harCredentials)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&h); err != nil {
		return fmt.Errorf("tapproxytest: WriteHAR: %w", err)
	}
	return nil
}

// entryOf converts a recorded exchange to a HAR entry: the one model of an
// exchange that the recorder's files and cassettes share. Faults applied are
// named in the entry's comment.
func entryOf(ex Exchange, redact bool) har.Entry {
	e := har.FromParts(partsOf(ex))
	if len(ex.Faults) > 0 {
		e.Comment = "faults: " + strings.Join(ex.Faults, ", ")
	}
	if redact {
		har.Redact(&e)
	}
	return e
}

// partsOf lays a recorded exchange out for [har.FromParts].
func partsOf(ex Exchange) *har.Parts {
	p := &har.Parts{
		RequestBody:      ex.Request.Body,
		RequestBodyBytes: ex.Request.BodyBytes,
		RequestTruncated: ex.Request.BodyTruncated,
		Body:             ex.Response.Body,
		BodyBytes:        ex.Response.BodyBytes,
		Truncated:        ex.Response.BodyTruncated,
		Upgraded:         ex.Response.StatusCode == http.StatusSwitchingProtocols,
		Start:            ex.Start,
		TimeToHeaders:    ex.TimeToHeaders,
		Duration:         ex.Duration,
		Err:              ex.Err,
	}
	if ex.Request.URL != nil {
		p.Request = &http.Request{
			Method: ex.Request.Method,
			URL:    ex.Request.URL,
			Host:   ex.Request.Host,
			Header: ex.Request.Header,
			Proto:  "HTTP/1.1",
		}
	}
	if ex.Response.StatusCode != 0 {
		p.Response = &http.Response{
			StatusCode: ex.Response.StatusCode,
			Proto:      "HTTP/1.1",
			Header:     ex.Response.Header,
			Trailer:    ex.Response.Trailer,
		}
	}
	return p
}

// harFileName is name with every character other than letters, digits, '-',
// '_' and '.' replaced by '_', and ".har" added.
func harFileName(name string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, name) + ".har"
}

// writeHAROnFailure runs when the test ends, after the server closed.
func (s *Server) writeHAROnFailure(dir string) {
	if !s.tb.Failed() {
		return
	}
	path := filepath.Join(dir, harFileName(s.tb.Name()))
	err := os.MkdirAll(dir, 0o755)
	if err == nil {
		err = writeFile(path, s.Recorder.WriteHAR)
	}
	if err != nil {
		s.tb.Log("tapproxytest: writing the recorded exchanges: " + err.Error())
		return
	}
	s.tb.Log("tapproxytest: recorded exchanges written to " + path + "; open it in a browser's network panel")
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
