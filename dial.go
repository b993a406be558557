package polymux

import (
	"context"
	"crypto/tls"
	"net"
)

// Dial connects to address and starts a client session on the connection.
func Dial(network, address string, cfg *Config) (*Session, error) {
	return DialContext(context.Background(), network, address, cfg)
}

// DialContext connects to address, bounded by ctx, and starts a client
// session on the connection.
func DialContext(ctx context.Context, network, address string, cfg *Config) (*Session, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return clientOrClose(conn, cfg)
}

// DialTLS connects to address over TLS and starts a client session on the
// connection. The TLS handshake completes before DialTLS returns.
func DialTLS(network, address string, tlsConf *tls.Config, cfg *Config) (*Session, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	conn, err := tls.Dial(network, address, tlsConf)
	if err != nil {
		return nil, err
	}
	return clientOrClose(conn, cfg)
}

func clientOrClose(conn net.Conn, cfg *Config) (*Session, error) {
	s, err := Client(conn, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}
