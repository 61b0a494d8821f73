package tapproxy

import "sync"

// bodyBuffer keeps the first limit bytes written to it and counts the rest.
// Like os/exec's prefixSuffixSaver, it never fails the stream it copies:
// Write always reports len(p), nil. Its storage comes from a capturePool and
// goes back there on release.
type bodyBuffer struct {
	pool  *capturePool
	buf   *[]byte // nil until the first byte arrives
	limit int
	total int64
}

func (b *bodyBuffer) Write(p []byte) (int, error) {
	b.total += int64(len(p))
	room := b.limit - b.len()
	if room <= 0 || len(p) == 0 {
		return len(p), nil
	}
	if b.buf == nil {
		b.buf = b.pool.get()
	}
	keep := p[:min(room, len(p))]
	buf := *b.buf
	if need := len(buf) + len(keep); need > cap(buf) {
		// Grow by doubling, but never past the limit: what goes back to
		// the pool is at most limit bytes.
		grown := make([]byte, len(buf), min(b.limit, max(need, 2*cap(buf), 512)))
		copy(grown, buf)
		buf = grown
	}
	*b.buf = append(buf, keep...)
	return len(p), nil
}

func (b *bodyBuffer) len() int {
	if b.buf == nil {
		return 0
	}
	return len(*b.buf)
}

// bytes returns the kept prefix. It aliases the pooled storage.
func (b *bodyBuffer) bytes() []byte {
	if b.buf == nil {
		return nil
	}
	return *b.buf
}

// truncated reports whether bytes were written past the limit.
func (b *bodyBuffer) truncated() bool { return b.total > int64(b.len()) }

// release returns the storage to the pool and readies b for reuse.
func (b *bodyBuffer) release() {
	if b.buf != nil {
		b.pool.put(b.buf)
	}
	*b = bodyBuffer{}
}

// capturePool recycles capture storage. Each Proxy has its own, so buffers
// are sized for its limit and a proxy with a large limit does not leave large
// buffers to one with a small limit.
type capturePool struct{ pool sync.Pool }

func (p *capturePool) get() *[]byte {
	if b, ok := p.pool.Get().(*[]byte); ok {
		return b
	}
	return new([]byte)
}

func (p *capturePool) put(b *[]byte) {
	*b = (*b)[:0]
	p.pool.Put(b)
}
