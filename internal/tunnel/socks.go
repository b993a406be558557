package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// SOCKS5 (RFC 1928) constants: the version, the one method offered (no
// authentication), the one command served (CONNECT), address types, and
// reply codes.
const (
	socks5        = 0x05
	socksNoAuth   = 0x00
	socksNoMethod = 0xFF
	socksConnect  = 0x01
	socksIPv4     = 0x01
	socksDomain   = 0x03
	socksIPv6     = 0x04

	socksOK              = 0x00
	socksFailure         = 0x01
	socksNotAllowed      = 0x02
	socksNetUnreachable  = 0x03
	socksHostUnreachable = 0x04
	socksRefused         = 0x05
	socksBadCommand      = 0x07
	socksBadAddressType  = 0x08
)

// errSocks is wrapped by socksHandshake's errors.
var errSocks = errors.New("socks5")

// socksHandshake serves a SOCKS5 greeting and request on c and returns the
// CONNECT target as host:port. A request it cannot serve gets the failure
// reply RFC 1928 gives for it before the error is returned. The success
// (or failure) reply for the target itself is the caller's.
func socksHandshake(c io.ReadWriter) (target string, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return "", fmt.Errorf("%w: greeting: %v", errSocks, err)
	}
	if hdr[0] != socks5 {
		return "", fmt.Errorf("%w: version %d, not 5", errSocks, hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, methods); err != nil {
		return "", fmt.Errorf("%w: greeting: %v", errSocks, err)
	}
	noAuth := false
	for _, m := range methods {
		noAuth = noAuth || m == socksNoAuth
	}
	if !noAuth {
		c.Write([]byte{socks5, socksNoMethod})
		return "", fmt.Errorf("%w: the client does not offer the no-authentication method", errSocks)
	}
	if _, err := c.Write([]byte{socks5, socksNoAuth}); err != nil {
		return "", err
	}
	var req [4]byte // VER CMD RSV ATYP
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return "", fmt.Errorf("%w: request: %v", errSocks, err)
	}
	if req[0] != socks5 {
		return "", fmt.Errorf("%w: request version %d, not 5", errSocks, req[0])
	}
	var host string
	switch req[3] {
	case socksIPv4, socksIPv6:
		ip := make([]byte, 4)
		if req[3] == socksIPv6 {
			ip = make([]byte, 16)
		}
		if _, err := io.ReadFull(c, ip); err != nil {
			return "", fmt.Errorf("%w: address: %v", errSocks, err)
		}
		a, _ := netip.AddrFromSlice(ip)
		host = a.String()
	case socksDomain:
		var n [1]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return "", fmt.Errorf("%w: address: %v", errSocks, err)
		}
		name := make([]byte, n[0])
		if _, err := io.ReadFull(c, name); err != nil {
			return "", fmt.Errorf("%w: address: %v", errSocks, err)
		}
		if len(name) == 0 {
			socksReply(c, socksFailure, netip.AddrPort{})
			return "", fmt.Errorf("%w: empty domain name", errSocks)
		}
		host = string(name)
	default:
		socksReply(c, socksBadAddressType, netip.AddrPort{})
		return "", fmt.Errorf("%w: address type %d", errSocks, req[3])
	}
	var port [2]byte
	if _, err := io.ReadFull(c, port[:]); err != nil {
		return "", fmt.Errorf("%w: port: %v", errSocks, err)
	}
	if req[1] != socksConnect {
		socksReply(c, socksBadCommand, netip.AddrPort{})
		return "", fmt.Errorf("%w: command %d (only CONNECT is served)", errSocks, req[1])
	}
	return net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(port[:])))), nil
}

// socksReply sends a reply with code rep and the bound address (0.0.0.0:0
// when not known).
func socksReply(w io.Writer, rep byte, bound netip.AddrPort) error {
	ip := bound.Addr().Unmap()
	b := []byte{socks5, rep, 0}
	switch {
	case ip.Is6():
		b = append(b, socksIPv6)
		b = append(b, ip.AsSlice()...)
	case ip.Is4():
		b = append(b, socksIPv4)
		b = append(b, ip.AsSlice()...)
	default:
		b = append(b, socksIPv4, 0, 0, 0, 0)
	}
	b = binary.BigEndian.AppendUint16(b, bound.Port())
	_, err := w.Write(b)
	return err
}

// socksCode is the SOCKS5 reply for a tunnel failure code.
func socksCode(code string) byte {
	switch code {
	case codeNotAllowed:
		return socksNotAllowed
	case codeRefused:
		return socksRefused
	case codeNetUnreach:
		return socksNetUnreachable
	case codeHostUnreach:
		return socksHostUnreachable
	}
	return socksFailure
}
