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

// copyBuffers is the ReverseProxy.BufferPool shared by all proxies. It holds
// pointers so that Put does not allocate.
var copyBuffers = &bufferPool{pool: sync.Pool{New: func() any {
	b := make([]byte, copyBufferSize)
	return &b
}}}

type bufferPool struct{ pool sync.Pool }

func (p *bufferPool) Get() []byte { return *p.pool.Get().(*[]byte) }

func (p *bufferPool) Put(b []byte) {
	if cap(b) != copyBufferSize {
		return
	}
	b = b[:copyBufferSize]
	p.pool.Put(&b)
}
