package tapproxytest

import (
	"net/http"
	"slices"
	"strings"

	"github.com/tapproxy/tapproxy/har"
)

// minSecret is the shortest credential value that a cassette scrubs from
// the rest of an entry: shorter ones would match too much by chance.
const minSecret = 6

// secretsIn returns the credential values in the named headers: the
// credentials of Authorization and Proxy-Authorization (after the scheme),
// and the values of cookies.
func secretsIn(header func(name string) []string) []string {
	var out []string
	add := func(v string) {
		if v = strings.TrimSpace(v); len(v) >= minSecret {
			out = append(out, v)
		}
	}
	for _, name := range []string{"Authorization", "Proxy-Authorization"} {
		for _, v := range header(name) {
			if _, cred, ok := strings.Cut(v, " "); ok {
				add(cred)
			} else {
				add(v)
			}
		}
	}
	for _, v := range header("Cookie") {
		for part := range strings.SplitSeq(v, ";") {
			_, val, _ := strings.Cut(part, "=")
			add(val)
		}
	}
	for _, v := range header("Set-Cookie") {
		pair, _, _ := strings.Cut(v, ";")
		_, val, _ := strings.Cut(pair, "=")
		add(val)
	}
	// Longest first, so that a secret that contains another goes whole.
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return slices.Compact(out)
}

func headerSecrets(h http.Header) []string { return secretsIn(h.Values) }

func entrySecrets(e *har.Entry) []string {
	return secretsIn(func(name string) []string {
		var vs []string
		for _, list := range [][]har.NameValue{e.Request.Headers, e.Response.Headers} {
			for _, nv := range list {
				if strings.EqualFold(nv.Name, name) {
					vs = append(vs, nv.Value)
				}
			}
		}
		return vs
	})
}

// scrub replaces each secret in s with REDACTED.
func scrub(s string, secrets []string) string {
	for _, sec := range secrets {
		s = strings.ReplaceAll(s, sec, "REDACTED")
	}
	return s
}

// scrubEntry removes the entry's credential values from everywhere else in
// it, such as a body that echoes a token, so that the secret bytes never
// reach the file. Bodies kept in base64 are left as they are.
func scrubEntry(e *har.Entry, secrets []string) {
	if len(secrets) == 0 {
		return
	}
	e.Request.URL = scrub(e.Request.URL, secrets)
	for _, list := range [][]har.NameValue{e.Request.Headers, e.Request.QueryString, e.Response.Headers, e.Response.Trailers} {
		for i := range list {
			list[i].Value = scrub(list[i].Value, secrets)
		}
	}
	if pd := e.Request.PostData; pd != nil && pd.Encoding == "" {
		pd.Text = scrub(pd.Text, secrets)
	}
	if c := &e.Response.Content; c.Encoding == "" {
		c.Text = scrub(c.Text, secrets)
	}
	e.Response.RedirectURL = scrub(e.Response.RedirectURL, secrets)
}
