//go:build unix

package polymux

import (
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"reflect"
	"testing"
)

// readerType is the type of what a bufio.Reader reads from.
func readerType(rd io.Reader) reflect.Type { return reflect.TypeOf(rd) }

func TestListenerSessionsReadAndWriteTheSocketItself(t *testing.T) {
	cert := selfSigned(t)
	cases := []struct {
		name, network string
		tls           bool
		proto         Protocol
		reader        reflect.Type // what the session's buffer reads from
		vectored      bool
	}{
		{"tcp/auto", "tcp", false, Auto, reflect.TypeFor[*net.TCPConn](), true},
		{"tcp/explicit_protocol", "tcp", false, SmuxV2, reflect.TypeFor[*net.TCPConn](), true},
		{"unix/auto", "unix", false, Auto, reflect.TypeFor[*net.UnixConn](), true},
		// TLS cannot be peeked: the first bytes are read and replayed.
		{"tls/auto", "tcp", true, Auto, reflect.TypeFor[*prefixReader](), false},
		{"tls/explicit_protocol", "tcp", true, MuxadoV2, reflect.TypeFor[*tls.Conn](), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			addr := "127.0.0.1:0"
			if tc.network == "unix" {
				addr = filepath.Join(t.TempDir(), "sock")
			}
			cfg := &Config{Protocol: tc.proto}
			var ln *Listener
			var err error
			if tc.tls {
				ln, err = ListenTLS(tc.network, addr, &tls.Config{Certificates: []tls.Certificate{cert}}, cfg)
			} else {
				ln, err = Listen(tc.network, addr, cfg)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			proto := tc.proto
			if proto == Auto {
				proto = Yamux
			}
			var conn net.Conn
			if tc.tls {
				conn, err = tls.Dial(tc.network, ln.Addr().String(), clientTLS(cert))
			} else {
				conn, err = net.Dial(tc.network, ln.Addr().String())
			}
			if err != nil {
				t.Fatal(err)
			}
			cli, err := Client(conn, &Config{Protocol: proto})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			st, err := cli.OpenStream(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			srv, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			wait := serve(srv, echo)
			defer wait()
			if err := roundTrip(st, randomBytes(300<<10)); err != nil {
				t.Fatal(err)
			}
			if got := readerType(srv.rd.conn); got != tc.reader {
				t.Errorf("the session reads from %v, want %v", got, tc.reader)
			}
			if srv.w.enc.vectored != tc.vectored {
				t.Errorf("vectored writes: %v, want %v", srv.w.enc.vectored, tc.vectored)
			}
			if srv.Protocol() != proto {
				t.Errorf("served %v, want %v", srv.Protocol(), proto)
			}
			cli.Close()
			srv.Close()
		})
	}
}
