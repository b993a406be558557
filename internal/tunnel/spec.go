package tunnel

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// defaultBindHost is the bind address of a forward that names none, as in
// ssh.
const defaultBindHost = "127.0.0.1"

// Forward is one -L or -R: connections accepted on Bind go to Target. For
// -L, Bind is on the client and the server dials Target; for -R, Bind is
// on the server and the client dials Target.
type Forward struct {
	Bind   string // host:port; host "" means every interface
	Target string // host:port
}

// String is the forward in ssh's notation.
func (f Forward) String() string { return f.Bind + ":" + f.Target }

// ParseForward parses ssh's [bind:]port:host:hostport. IPv6 addresses go in
// brackets; a missing bind address means 127.0.0.1, and "*" (or an empty
// one, as in ":8080:host:80") means every interface. A bind port of 0 lets
// the system pick one.
func ParseForward(s string) (Forward, error) {
	parts, err := splitColons(s)
	if err != nil {
		return Forward{}, fmt.Errorf("forward %q: %v", s, err)
	}
	var bindHost, bindPort, host, port string
	switch len(parts) {
	case 3:
		bindHost, bindPort, host, port = defaultBindHost, parts[0], parts[1], parts[2]
	case 4:
		bindHost, bindPort, host, port = bindAddress(parts[0]), parts[1], parts[2], parts[3]
	default:
		return Forward{}, fmt.Errorf("forward %q: want [bind:]port:host:hostport", s)
	}
	if err := checkPort(bindPort, true); err != nil {
		return Forward{}, fmt.Errorf("forward %q: port: %v", s, err)
	}
	if host == "" {
		return Forward{}, fmt.Errorf("forward %q: no target host", s)
	}
	if err := checkPort(port, false); err != nil {
		return Forward{}, fmt.Errorf("forward %q: hostport: %v", s, err)
	}
	return Forward{Bind: net.JoinHostPort(bindHost, bindPort), Target: net.JoinHostPort(host, port)}, nil
}

// ParseSocks parses -D's [bind:]port into a listen address, with the same
// bind address rules as ParseForward.
func ParseSocks(s string) (string, error) {
	parts, err := splitColons(s)
	if err != nil {
		return "", fmt.Errorf("socks %q: %v", s, err)
	}
	var host, port string
	switch len(parts) {
	case 1:
		host, port = defaultBindHost, parts[0]
	case 2:
		host, port = bindAddress(parts[0]), parts[1]
	default:
		return "", fmt.Errorf("socks %q: want [bind:]port", s)
	}
	if err := checkPort(port, true); err != nil {
		return "", fmt.Errorf("socks %q: port: %v", s, err)
	}
	return net.JoinHostPort(host, port), nil
}

// bindAddress maps ssh's spellings of "every interface" to "".
func bindAddress(h string) string {
	if h == "*" {
		return ""
	}
	return h
}

// splitColons splits s at the colons outside square brackets, dropping
// the brackets: "[::1]:80" is "::1" and "80".
func splitColons(s string) ([]string, error) {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '[':
			end := strings.IndexByte(s[i:], ']')
			if end < 0 || cur.Len() > 0 {
				return nil, fmt.Errorf("unbalanced '['")
			}
			cur.WriteString(s[i+1 : i+end])
			i += end
			if i+1 < len(s) && s[i+1] != ':' {
				return nil, fmt.Errorf("']' not followed by ':'")
			}
		case ']':
			return nil, fmt.Errorf("unbalanced ']'")
		case ':':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(parts, cur.String()), nil
}

// checkPort checks a decimal port; 0 is allowed only where zeroOK.
func checkPort(p string, zeroOK bool) error {
	n, err := strconv.ParseUint(p, 10, 16)
	switch {
	case err != nil:
		return fmt.Errorf("%q is not a port number", p)
	case n == 0 && !zeroOK:
		return fmt.Errorf("port 0 is not a port to connect to")
	}
	return nil
}
