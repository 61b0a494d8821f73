package tapproxy

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// NewTransport returns the transport [New] uses by default, sized for a
// proxy: unlike [http.DefaultTransport], it keeps enough idle connections per
// upstream host that concurrent load reuses them instead of churning through
// TIME_WAIT; it speaks HTTP/2 to TLS upstreams; it neither asks for nor
// undoes compression, so clients get the bytes the upstream sent; and it does
// not consult HTTP_PROXY, since the upstream is addressed directly.
//
// Each call returns a new transport that callers may adjust (for example its
// TLSClientConfig, or Protocols for h2c upstreams) before passing it to
// [WithTransport].
func NewTransport() *http.Transport {
	return &http.Transport{
		DialContext: (&net.Dialer{
			Timeout:   30 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: 1 * time.Second,
		DisableCompression:    true,
	}
}

// copyBufferSize matches what ReverseProxy allocates per request when it has
// no BufferPool.
const copyBufferSize = 32 << 10

// copyBuffers is the ReverseProxy.BufferPool shared by all proxies.
var copyBuffers = new(bufferPool)

// bufferPool recycles copy buffers without allocating. sync.Pool holds
// pointers, but ReverseProxy hands back a bare slice: boxing it anew on
// every Put would allocate once per request, so the boxes are recycled in
// a pool of their own.
type bufferPool struct{ bufs, boxes sync.Pool }

func (p *bufferPool) Get() []byte {
	box, ok := p.bufs.Get().(*[]byte)
	if !ok {
		return make([]byte, copyBufferSize)
	}
	b := *box
	*box = nil // the box must not keep the buffer alive
	p.boxes.Put(box)
	return b
}

func (p *bufferPool) Put(b []byte) {
	if cap(b) != copyBufferSize {
		return
	}
	box, ok := p.boxes.Get().(*[]byte)
	if !ok {
		box = new([]byte)
	}
	*box = b[:copyBufferSize]
	p.bufs.Put(box)
}
