// Package netproxy is a TCP proxy for tests that can make the network path
// go dead without closing anything, as a NAT, a proxy or a dead route does:
// Freeze stops every connection from moving bytes while its sockets stay
// open (the kernel keeps acknowledging, so TCP keepalives never fire), and
// Heal lets new connections through again while the frozen ones stay
// frozen for good. CutOnAnswer cuts a connection right after the server
// answered, before the client hears it.
package netproxy

import (
	"bytes"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// Proxy forwards connections to a target address.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	frozen bool
	// cut, when set, is the marker of CutOnAnswer; cutDone is closed
	// once a connection was cut.
	cut     []byte
	cutDone chan struct{}
	pairs   map[*pair]struct{}
	closed  chan struct{}
	wg      sync.WaitGroup
}

// pair is one proxied connection: the client's and the target's sockets.
type pair struct {
	client, server net.Conn // server is nil for a connection accepted while frozen
	frozen         chan struct{}
	once           sync.Once
}

func (p *pair) freeze() { p.once.Do(func() { close(p.frozen) }) }

func (p *pair) isFrozen() bool {
	select {
	case <-p.frozen:
		return true
	default:
		return false
	}
}

// Start listens on a free loopback port and forwards to target.
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, pairs: map[*pair]struct{}{}, closed: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// ForDSN starts a proxy to the server of dsn (a URL), closed when the test
// ends, and returns it with dsn through it.
func ForDSN(t testing.TB, dsn string) (*Proxy, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	px, err := Start(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(px.Close)
	return px, strings.Replace(dsn, u.Host, px.Addr(), 1)
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Freeze stops every open connection from moving bytes, and every one
// accepted until Heal; their sockets stay open until Close.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.frozen = true
	for pr := range p.pairs {
		pr.freeze()
	}
}

// CutOnAnswer arms the proxy to cut, once, the connection on which the
// server sends bytes containing marker: those bytes are not forwarded and
// both sockets are closed, as when a path dies after the server answered
// (a statement's answer comes after its commit) and before the client
// heard it. The marker must arrive within one read of the server's
// socket (keep it short). The channel returned is closed once it cut.
func (p *Proxy) CutOnAnswer(marker []byte) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = bytes.Clone(marker)
	p.cutDone = make(chan struct{})
	return p.cutDone
}

// cutHere reports whether b, read from a server, must be cut, and disarms
// the cut if so.
func (p *Proxy) cutHere(b []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut == nil || !bytes.Contains(b, p.cut) {
		return false
	}
	p.cut = nil
	close(p.cutDone)
	return true
}

// Heal lets new connections through again; the frozen ones stay frozen.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.frozen = false
}

// Close closes the listener and every connection, and waits for the
// proxy's goroutines.
func (p *Proxy) Close() {
	p.mu.Lock()
	select {
	case <-p.closed:
		p.mu.Unlock()
		return
	default:
	}
	close(p.closed)
	_ = p.ln.Close()
	for pr := range p.pairs {
		pr.close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (pr *pair) close() {
	_ = pr.client.Close()
	if pr.server != nil {
		_ = pr.server.Close()
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	pr := &pair{client: c, frozen: make(chan struct{})}
	p.mu.Lock()
	if !p.add(pr) {
		p.mu.Unlock()
		_ = c.Close()
		return
	}
	frozen := p.frozen
	p.mu.Unlock()
	if frozen {
		// A dead path: the connection is accepted, nothing goes through.
		pr.freeze()
		return
	}
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		p.remove(pr)
		_ = c.Close()
		return
	}
	p.mu.Lock()
	select {
	case <-p.closed:
		p.mu.Unlock()
		_ = s.Close()
		return
	default:
	}
	pr.server = s
	if p.frozen {
		pr.freeze()
	}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	p.wg.Add(2)
	go p.copy(pr, s, c, false, done)
	go p.copy(pr, c, s, true, done)
	<-done
	// One side ended while the pair moved bytes: end both, as a live path
	// would. A frozen pair never gets here until Close.
	if !pr.isFrozen() {
		p.remove(pr)
		pr.close()
	}
}

// add registers pr unless the proxy is closed (p.mu held).
func (p *Proxy) add(pr *pair) bool {
	select {
	case <-p.closed:
		return false
	default:
	}
	p.pairs[pr] = struct{}{}
	return true
}

func (p *Proxy) remove(pr *pair) {
	p.mu.Lock()
	delete(p.pairs, pr)
	p.mu.Unlock()
}

// copy forwards src to dst until src ends or the pair freezes; bytes read
// once frozen are held back, and nothing more is read. fromServer: src is
// the server's socket, where CutOnAnswer looks.
func (p *Proxy) copy(pr *pair, dst, src net.Conn, fromServer bool, done chan<- struct{}) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if pr.isFrozen() {
			<-p.closed
			done <- struct{}{}
			return
		}
		if n > 0 && fromServer && p.cutHere(buf[:n]) {
			pr.close()
			done <- struct{}{}
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				done <- struct{}{}
				return
			}
		}
		if err != nil { // EOF, a reset or a close: the pair ends
			done <- struct{}{}
			return
		}
	}
}
