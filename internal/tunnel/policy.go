package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Policy is a server's list of allowed addresses: for -allow-reverse the
// addresses a client may bind, for -allow-forward the targets it may
// reach. It is checked against IP addresses only; names are resolved
// first (Resolve), and the address checked is the one then used.
type Policy struct {
	rules []rule
	text  string
}

// rule is one entry: any address in prefixes, any port in [lo, hi].
type rule struct {
	prefixes []netip.Prefix
	lo, hi   uint16
}

// Policies that need no parsing: the defaults of the two flags.
var (
	// LoopbackOnly allows 127.0.0.0/8 and ::1 on every port.
	LoopbackOnly = MustParsePolicy("localhost:*")
	// AnyAddress allows everything.
	AnyAddress = MustParsePolicy("*:*")
)

// ParsePolicy parses a comma-separated list of host:port or
// host:low-high entries. host is an IP address, a CIDR prefix, "localhost"
// (127.0.0.0/8 and ::1) or "*" (any address); IPv6 goes in brackets, as in
// "[::1]:22" or "[fd00::/8]:1000-2000". A port of "*" means every port.
func ParsePolicy(s string) (*Policy, error) {
	p := &Policy{text: s}
	for _, entry := range strings.Split(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		r, err := parseRule(entry)
		if err != nil {
			return nil, fmt.Errorf("policy entry %q: %v", entry, err)
		}
		p.rules = append(p.rules, r)
	}
	if len(p.rules) == 0 {
		return nil, fmt.Errorf("policy %q has no entries", s)
	}
	return p, nil
}

// MustParsePolicy is ParsePolicy for policies known to be valid.
func MustParsePolicy(s string) *Policy {
	p, err := ParsePolicy(s)
	if err != nil {
		panic(err)
	}
	return p
}

// parseRule parses one host:port or host:low-high entry.
func parseRule(entry string) (rule, error) {
	i := strings.LastIndexByte(entry, ':')
	if i < 0 {
		return rule{}, errors.New("want host:port or host:low-high")
	}
	host, ports := entry[:i], entry[i+1:]
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	var r rule
	switch {
	case host == "*":
		r.prefixes = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	case strings.EqualFold(host, "localhost"):
		r.prefixes = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	case strings.Contains(host, "/"):
		pfx, err := netip.ParsePrefix(host)
		if err != nil {
			return rule{}, fmt.Errorf("%q is not a CIDR prefix", host)
		}
		r.prefixes = []netip.Prefix{pfx.Masked()}
	default:
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return rule{}, fmt.Errorf("%q is not an IP address, a CIDR prefix, localhost or *", host)
		}
		r.prefixes = []netip.Prefix{netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen())}
	}
	lo, hi, err := parsePorts(ports)
	if err != nil {
		return rule{}, err
	}
	r.lo, r.hi = lo, hi
	return r, nil
}

// parsePorts parses "*", "port" or "low-high".
func parsePorts(s string) (lo, hi uint16, err error) {
	if s == "*" {
		return 1, 65535, nil
	}
	a, b, isRange := strings.Cut(s, "-")
	if !isRange {
		b = a
	}
	l, err1 := strconv.ParseUint(a, 10, 16)
	h, err2 := strconv.ParseUint(b, 10, 16)
	switch {
	case err1 != nil || err2 != nil:
		return 0, 0, fmt.Errorf("%q is not a port or a low-high range", s)
	case l == 0 || l > h:
		return 0, 0, fmt.Errorf("port range %q is empty or starts at 0", s)
	}
	return uint16(l), uint16(h), nil
}

// String is the policy as it was given.
func (p *Policy) String() string { return p.text }

// Allows reports whether ip:port is allowed. Port 0 stands for "a port
// the system picks": it is allowed only where every port is.
func (p *Policy) Allows(ip netip.Addr, port uint16) bool {
	ip = ip.Unmap()
	lo, hi := port, port
	if port == 0 {
		lo, hi = 1, 65535
	}
	for _, r := range p.rules {
		if lo < r.lo || hi > r.hi {
			continue
		}
		for _, pfx := range r.prefixes {
			if pfx.Contains(ip) {
				return true
			}
		}
	}
	return false
}

// Resolver looks up the addresses of a name; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// ErrNotAllowed is what Resolve returns (wrapped) when no address of the
// host is allowed.
var ErrNotAllowed = errors.New("not allowed by the server's policy")

// Resolve returns the addresses of host:port that p allows, in the
// resolver's order. An IP address is not looked up; "" stands for every
// interface (0.0.0.0, which a policy allows only by name or by *). The
// caller must use the addresses returned, not the name again, so that a
// second lookup cannot answer differently (DNS rebinding).
func (p *Policy) Resolve(ctx context.Context, r Resolver, host string, port uint16) ([]netip.AddrPort, error) {
	var ips []netip.Addr
	if host == "" {
		ips = []netip.Addr{netip.IPv4Unspecified()}
	} else if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else {
		ips, err = r.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, err
		}
	}
	var out []netip.AddrPort
	for _, ip := range ips {
		if ip.Zone() != "" {
			continue // a zoned address names a link, which no policy entry does
		}
		if p.Allows(ip, port) {
			out = append(out, netip.AddrPortFrom(ip.Unmap(), port))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s (%s): %w", net.JoinHostPort(host, strconv.Itoa(int(port))), addrList(ips), ErrNotAllowed)
	}
	return out, nil
}

// addrList joins addresses for a log line.
func addrList(ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return strings.Join(s, " ")
}
