package tunnel

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"testing"
	"time"
)

// BenchmarkShape measures the ceiling the tunnel's shape sets on this
// machine, with no multiplexer at all: one TCP connection written for
// benchDuration directly, against the same bytes relayed through the
// tunnel's three connections in series (application -> client -> server
// -> target), each hop a plain read/write loop of 64 KiB, with and
// without TLS 1.3 on the middle connection. Every byte then crosses three
// connections' kernel copies instead of one, and the TLS hop encrypts and
// decrypts it, all on the same CPUs. BenchmarkTunnel's ratio is to be
// read against this one's.
func BenchmarkShape(b *testing.B) {
	for range b.N {
		direct := shapeRun(b, 0, false)
		plain := shapeRun(b, 2, false)
		withTLS := shapeRun(b, 2, true)
		b.ReportMetric(direct, "direct-MB/s")
		b.ReportMetric(plain/direct, "relayed-ratio")
		b.ReportMetric(withTLS/direct, "relayed-TLS-ratio")
	}
}

// shapePump copies src to dst with plain reads and writes (no splice, which
// the tunnel cannot use), then half-closes dst.
func shapePump(dst net.Conn, src net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if c, ok := dst.(interface{ CloseWrite() error }); ok {
				c.CloseWrite()
			}
			return
		}
	}
}

// shapeCert is a throwaway self-signed certificate for the TLS hop.
func shapeCert(b *testing.B) tls.Certificate {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	t := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "shape"}, NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"shape"}}
	der, err := x509.CreateCertificate(rand.Reader, t, t, &k.PublicKey, k)
	if err != nil {
		b.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// relayOnce accepts one connection on l and pumps it to a connection it
// dials to next, wrapped by wrap if not nil.
func relayOnce(l net.Listener, next string, wrap func(net.Conn) net.Conn) {
	c, err := l.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	m, err := net.Dial("tcp", next)
	if err != nil {
		return
	}
	if wrap != nil {
		m = wrap(m)
	}
	defer m.Close()
	shapePump(m, c)
}

// shapeRun writes for benchDuration through hops relays (0 or 2) and
// returns the MB/s the target read.
func shapeRun(b *testing.B, hops int, useTLS bool) float64 {
	listen := func() net.Listener {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { l.Close() })
		return l
	}
	target := listen()
	got := make(chan int64, 1)
	go func() {
		c, err := target.Accept()
		if err != nil {
			got <- 0
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, struct{ io.Reader }{c})
		got <- n
	}()
	addr := target.Addr().String()
	if hops == 2 {
		l2 := listen()
		if useTLS {
			l2 = tls.NewListener(l2, &tls.Config{Certificates: []tls.Certificate{shapeCert(b)}})
		}
		go relayOnce(l2, addr, nil)
		l1 := listen()
		var wrap func(net.Conn) net.Conn
		if useTLS {
			wrap = func(m net.Conn) net.Conn { return tls.Client(m, &tls.Config{InsecureSkipVerify: true}) }
		}
		go relayOnce(l1, l2.Addr().String(), wrap)
		addr = l1.Addr().String()
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	start := time.Now()
	for time.Since(start) < benchDuration {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	var n int64
	select {
	case n = <-got:
	case <-time.After(30 * time.Second):
		b.Fatal("the target never reached EOF")
	}
	return float64(n) / time.Since(start).Seconds() / 1e6
}
