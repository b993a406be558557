package tunnel

import (
	"bytes"
	"net/netip"
	"testing"
)

// socksConn is a scripted SOCKS5 client: what it sends, and what the
// server side writes back.
type socksConn struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (c *socksConn) Read(p []byte) (int, error)  { return c.in.Read(p) }
func (c *socksConn) Write(p []byte) (int, error) { return c.out.Write(p) }

func socksRun(send ...byte) (string, []byte, error) {
	c := &socksConn{in: bytes.NewReader(send)}
	target, err := socksHandshake(c)
	return target, c.out.Bytes(), err
}

func TestSocksHandshakeReadsEveryAddressType(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  []byte
		want string
	}{
		{"ipv4", []byte{5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90}, "127.0.0.1:8080"},
		{"ipv6", append(append([]byte{5, 1, 0, 4}, netip.MustParseAddr("2001:db8::1").AsSlice()...), 0, 80), "[2001:db8::1]:80"},
		{"domain", append(append([]byte{5, 1, 0, 3, 9}, "localhost"...), 1, 187), "localhost:443"},
	} {
		greeting := []byte{5, 2, 2, 0} // offers user/password and no-auth
		target, out, err := socksRun(append(greeting, tc.req...)...)
		if err != nil || target != tc.want {
			t.Errorf("%s: target %q, %v; want %q", tc.name, target, err, tc.want)
		}
		if !bytes.Equal(out, []byte{5, 0}) {
			t.Errorf("%s: wrote %v, want the no-auth method choice alone", tc.name, out)
		}
	}
}

func TestSocksHandshakeRepliesToWhatItCannotServe(t *testing.T) {
	for _, tc := range []struct {
		name string
		send []byte
		want []byte // what the client reads
	}{
		{"no acceptable method", []byte{5, 1, 2}, []byte{5, 0xFF}},
		{"bind command", []byte{5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80}, []byte{5, 0, 5, socksBadCommand, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"udp associate", []byte{5, 1, 0, 5, 3, 0, 1, 127, 0, 0, 1, 0, 80}, []byte{5, 0, 5, socksBadCommand, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"address type", []byte{5, 1, 0, 5, 1, 0, 9}, []byte{5, 0, 5, socksBadAddressType, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"socks4", []byte{4, 1, 0, 80, 127, 0, 0, 1, 0}, nil},
		{"truncated", []byte{5, 1, 0, 5, 1, 0, 1, 127}, []byte{5, 0}},
	} {
		_, out, err := socksRun(tc.send...)
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
		if !bytes.Equal(out, tc.want) {
			t.Errorf("%s: wrote %v, want %v", tc.name, out, tc.want)
		}
	}
}

func TestSocksRepliesCarryTheFailureAndBoundAddress(t *testing.T) {
	for code, want := range map[string]byte{
		codeNotAllowed: 0x02, codeRefused: 0x05, codeNetUnreach: 0x03, codeHostUnreach: 0x04, codeFailed: 0x01, "": 0x01,
	} {
		if got := socksCode(code); got != want {
			t.Errorf("socksCode(%q) = %#x, want %#x", code, got, want)
		}
	}
	var b bytes.Buffer
	socksReply(&b, socksOK, netip.MustParseAddrPort("[::1]:1080"))
	if want := append(append([]byte{5, 0, 0, 4}, netip.IPv6Loopback().AsSlice()...), 4, 56); !bytes.Equal(b.Bytes(), want) {
		t.Errorf("IPv6 reply %v, want %v", b.Bytes(), want)
	}
	b.Reset()
	socksReply(&b, socksOK, netip.MustParseAddrPort("10.1.2.3:80"))
	if want := []byte{5, 0, 0, 1, 10, 1, 2, 3, 0, 80}; !bytes.Equal(b.Bytes(), want) {
		t.Errorf("IPv4 reply %v, want %v", b.Bytes(), want)
	}
}
