package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/polymux/polymux"
	"github.com/polymux/polymux/internal/tunnel"
)

// tunnelMain is the tunnel command: "tunnel server" or "tunnel client".
func tunnelMain(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "server":
			return tunnelServer(args[1:], stderr)
		case "client":
			return tunnelClient(args[1:], stderr)
		case "-h", "-help", "--help", "help":
			fmt.Fprint(stdout, tunnelUsage)
			return 0
		}
	}
	fmt.Fprint(stderr, tunnelUsage)
	return 2
}

// tunnelUsage is the tunnel command's help.
const tunnelUsage = `usage:
  polymux tunnel server -listen ADDR -token-file FILE [-state-dir DIR] [-tls-cert FILE -tls-key FILE]
                        [-allow-reverse LIST] [-allow-forward LIST] [-protocol P] [flags]
  polymux tunnel client -server ADDR -token-file FILE [-fingerprint SHA256:...] [-ca-file FILE]
                        [-L [bind:]port:host:hostport]... [-R [bind:]port:host:hostport]...
                        [-D [bind:]port]... [-protocol P] [flags]

Forwards TCP over one polymux session, always in TLS 1.3, authenticated by
a shared token. -L, -R and -D work as in ssh. Run "polymux tunnel server -h"
or "polymux tunnel client -h" for every flag.
`

// commonFlags are the flags both sides take.
type commonFlags struct {
	tokenFile        string
	protocol         string
	drainTimeout     time.Duration
	logFormat        string
	logLevel         string
	stats            time.Duration
	heartbeat        time.Duration
	heartbeatTimeout time.Duration
	authTimeout      time.Duration
	dialTimeout      time.Duration
}

// register adds the common flags to fs, with protocol's default.
func (c *commonFlags) register(fs *flag.FlagSet, protocol string) {
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding the shared token (surrounding whitespace is ignored)")
	fs.StringVar(&c.protocol, "protocol", protocol, "wire protocol: yamux, smux1, smux2, muxado2 (auto: the server detects it)")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", tunnel.DefaultDrainTimeout, "on SIGINT or SIGTERM, how long running connections may take to finish")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&c.stats, "stats", 0, "log the session's statistics this often (0: never)")
	fs.DurationVar(&c.heartbeat, "heartbeat", 5*time.Second, "how often each side pings the other on the control stream")
	fs.DurationVar(&c.heartbeatTimeout, "heartbeat-timeout", 15*time.Second, "close a session whose peer has been silent this long")
	fs.DurationVar(&c.authTimeout, "auth-timeout", 10*time.Second, "bound on the TLS handshake and authentication")
	fs.DurationVar(&c.dialTimeout, "dial-timeout", 10*time.Second, "bound on dialling a forward's target")
}

// setup checks the common flags and returns the logger, the token, the
// polymux config and the timeouts; on bad input it returns an error for
// exit status 2.
func (c *commonFlags) setup(stderr io.Writer) (*slog.Logger, []byte, *polymux.Config, tunnel.Timeouts, error) {
	var to tunnel.Timeouts
	log, err := newLogger(stderr, c.logFormat, c.logLevel)
	if err != nil {
		return nil, nil, nil, to, err
	}
	if c.tokenFile == "" {
		return nil, nil, nil, to, errors.New("-token-file is required")
	}
	token, err := tunnel.ReadToken(c.tokenFile)
	if err != nil {
		return nil, nil, nil, to, err
	}
	proto, err := polymux.ParseProtocol(c.protocol)
	if err != nil {
		return nil, nil, nil, to, fmt.Errorf("-protocol: %v", err)
	}
	to = tunnel.Timeouts{Auth: c.authTimeout, Heartbeat: c.heartbeat, HeartbeatTimeout: c.heartbeatTimeout, Dial: c.dialTimeout}
	if c.authTimeout <= 0 || c.heartbeat <= 0 || c.dialTimeout <= 0 || c.drainTimeout < 0 {
		return nil, nil, nil, to, errors.New("timeouts must be positive")
	}
	if err := to.Validate(); err != nil {
		return nil, nil, nil, to, err
	}
	return log, token, &polymux.Config{Protocol: proto}, to, nil
}

// newLogger makes the slog logger for -log-format and -log-level.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format %q: want text or json", format)
}

// parseFlags parses args into fs; it returns -1 to go on, or the exit
// status (0 for -h, 2 for a bad flag or a stray argument).
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2
	}
	return -1
}

// badInput reports a start-up error and returns exit status 2.
func badInput(stderr io.Writer, name string, err error) int {
	fmt.Fprintf(stderr, "%s: %v\n", name, err)
	return 2
}

// newFlagSet is the flag set of one side, with the common flags on it.
func newFlagSet(name, protocol string, stderr io.Writer) (*flag.FlagSet, *commonFlags) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	common := new(commonFlags)
	common.register(fs, protocol)
	return fs, common
}

// tunnelServer is "polymux tunnel server".
func tunnelServer(args []string, stderr io.Writer) int {
	const name = "polymux tunnel server"
	fs, common := newFlagSet(name, "auto", stderr)
	listen := fs.String("listen", "", "address to listen on for clients, host:port")
	stateDir := fs.String("state-dir", "", "where the generated key and certificate are kept (default: polymux under the user's config directory)")
	certFile := fs.String("tls-cert", "", "certificate chain (PEM) to serve instead of the generated one; needs -tls-key")
	keyFile := fs.String("tls-key", "", "key (PEM) of -tls-cert")
	allowReverse := fs.String("allow-reverse", "localhost:*", "where clients may bind -R listeners: comma-separated host:port or host:low-high, host an IP, CIDR, localhost or *")
	allowForward := fs.String("allow-forward", "*:*", "what -L and -D may reach, in the same form")
	maxPending := fs.Int("max-pending", 256, "connections still in the TLS handshake or authentication; past it new ones are closed")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: %s -listen ADDR -token-file FILE [flags]\n\nflags:\n", name)
		fs.PrintDefaults()
	}
	if code := parseFlags(fs, args, stderr); code >= 0 {
		return code
	}
	log, token, mux, to, err := common.setup(stderr)
	if err != nil {
		return badInput(stderr, name, err)
	}
	if *listen == "" {
		return badInput(stderr, name, errors.New("-listen is required"))
	}
	rev, err := tunnel.ParsePolicy(*allowReverse)
	if err != nil {
		return badInput(stderr, name, fmt.Errorf("-allow-reverse: %v", err))
	}
	fwd, err := tunnel.ParsePolicy(*allowForward)
	if err != nil {
		return badInput(stderr, name, fmt.Errorf("-allow-forward: %v", err))
	}
	tlsConf, err := serverIdentity(log, *stateDir, *certFile, *keyFile)
	if err != nil {
		return badInput(stderr, name, err)
	}
	srv, err := tunnel.NewServer(tunnel.ServerConfig{
		TLS: tlsConf, Token: token, AllowReverse: rev, AllowForward: fwd, Mux: mux,
		Timeouts: to, MaxPending: *maxPending, StatsInterval: common.stats, Logger: log,
	})
	if err != nil {
		return badInput(stderr, name, err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return badInput(stderr, name, err)
	}
	log.Info("listening", "addr", ln.Addr().String(), "protocol", mux.Protocol.String(), "allow_reverse", rev.String(), "allow_forward", fwd.String())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		log.Error("listener failed", "err", err)
		return 1
	case <-ctx.Done():
	}
	stop() // a second signal ends the process at once
	log.Info("shutting down", "drain_timeout", common.drainTimeout)
	dctx, cancel := context.WithTimeout(context.Background(), common.drainTimeout)
	defer cancel()
	if err := srv.Drain(dctx); err != nil {
		log.Warn("drain timed out; connections still running were closed", "timeout", common.drainTimeout)
	}
	<-served
	log.Info("stopped")
	return 0
}

// serverIdentity loads -tls-cert and -tls-key, or the generated identity
// in the state directory, and logs the fingerprint clients pin.
func serverIdentity(log *slog.Logger, stateDir, certFile, keyFile string) (*tls.Config, error) {
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	if certFile != "" {
		cert, err := tunnel.LoadKeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("-tls-cert/-tls-key: %v", err)
		}
		log.Info("server fingerprint", "fingerprint", tunnel.Fingerprint(cert.Leaf), "cert", certFile)
		return tunnel.ServerTLSConfig(cert), nil
	}
	if stateDir == "" {
		dir, err := os.UserConfigDir()
		if err != nil {
			return nil, fmt.Errorf("no -state-dir and no user config directory: %v", err)
		}
		stateDir = filepath.Join(dir, "polymux")
	}
	cert, created, err := tunnel.LoadOrCreateIdentity(stateDir, time.Now())
	if err != nil {
		return nil, fmt.Errorf("-state-dir: %v", err)
	}
	if created {
		log.Info("generated a new server key", "state_dir", stateDir)
	}
	log.Info("server fingerprint", "fingerprint", tunnel.Fingerprint(cert.Leaf), "state_dir", stateDir)
	return tunnel.ServerTLSConfig(cert), nil
}

// repeated is a flag that may be given many times.
type repeated []string

// String lists the values given, for flag's defaults.
func (r *repeated) String() string { return strings.Join(*r, " ") }

// Set adds one more value.
func (r *repeated) Set(s string) error { *r = append(*r, s); return nil }

// tunnelClient is "polymux tunnel client".
func tunnelClient(args []string, stderr io.Writer) int {
	const name = "polymux tunnel client"
	fs, common := newFlagSet(name, "yamux", stderr)
	server := fs.String("server", "", "the tunnel server, host:port")
	fingerprint := fs.String("fingerprint", "", "the server key's fingerprint (SHA256:..., as the server logs it)")
	caFile := fs.String("ca-file", "", "CA certificates (PEM) the server's certificate must verify against")
	serverName := fs.String("server-name", "", "with -ca-file: the name the certificate must carry (default: the -server host)")
	tofu := fs.Bool("tofu", false, "with neither -fingerprint nor -ca-file: trust the key seen first, for the life of this process")
	backoffMin := fs.Duration("backoff-min", 250*time.Millisecond, "first redial delay; it doubles after each failure")
	backoffMax := fs.Duration("backoff-max", 10*time.Second, "longest redial delay")
	var locals, remotes, socks repeated
	fs.Var(&locals, "L", "[bind:]port:host:hostport: listen here, the server dials host:hostport (repeatable)")
	fs.Var(&remotes, "R", "[bind:]port:host:hostport: the server listens, this side dials host:hostport (repeatable)")
	fs.Var(&socks, "D", "[bind:]port: a SOCKS5 proxy here, exiting at the server (repeatable)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: %s -server ADDR -token-file FILE [-fingerprint SHA256:...] [-L ...] [-R ...] [-D ...] [flags]\n\nflags:\n", name)
		fs.PrintDefaults()
	}
	if code := parseFlags(fs, args, stderr); code >= 0 {
		return code
	}
	cfg, err := clientConfig(common, stderr, *server, *fingerprint, *caFile, *serverName, *tofu, locals, remotes, socks)
	if err != nil {
		return badInput(stderr, name, err)
	}
	if *backoffMin <= 0 || *backoffMax < *backoffMin {
		return badInput(stderr, name, errors.New("-backoff-min must be positive and at most -backoff-max"))
	}
	cfg.Backoff = tunnel.Backoff{Min: *backoffMin, Max: *backoffMax}
	cli, err := tunnel.NewClient(*cfg)
	if err != nil {
		return badInput(stderr, name, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, func() {
		stop() // a second signal ends the process at once
		cfg.Logger.Info("shutting down", "drain_timeout", common.drainTimeout)
	})
	if err := cli.Run(ctx); err != nil {
		cfg.Logger.Error("giving up", "err", err)
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	cfg.Logger.Info("stopped")
	return 0
}

// clientConfig checks the client's flags and builds its configuration.
func clientConfig(common *commonFlags, stderr io.Writer, server, fingerprint, caFile, serverName string, tofu bool, locals, remotes, socks []string) (*tunnel.ClientConfig, error) {
	log, token, mux, to, err := common.setup(stderr)
	if err != nil {
		return nil, err
	}
	if server == "" {
		return nil, errors.New("-server is required")
	}
	if mux.Protocol == polymux.Auto {
		return nil, errors.New("-protocol auto is for servers: a client picks one")
	}
	trust := &tunnel.Trust{ServerName: serverName, TOFU: tofu}
	if fingerprint != "" {
		if trust.Fingerprint, err = tunnel.ParseFingerprint(fingerprint); err != nil {
			return nil, err
		}
	}
	if caFile != "" {
		if trust.Roots, err = tunnel.LoadRoots(caFile); err != nil {
			return nil, fmt.Errorf("-ca-file: %v", err)
		}
	}
	cfg := &tunnel.ClientConfig{Server: server, Trust: trust, Token: token, Mux: mux, Timeouts: to,
		DrainTimeout: common.drainTimeout, StatsInterval: common.stats, Logger: log}
	for _, s := range locals {
		f, err := tunnel.ParseForward(s)
		if err != nil {
			return nil, fmt.Errorf("-L: %v", err)
		}
		cfg.Local = append(cfg.Local, f)
	}
	for _, s := range remotes {
		f, err := tunnel.ParseForward(s)
		if err != nil {
			return nil, fmt.Errorf("-R: %v", err)
		}
		cfg.Remote = append(cfg.Remote, f)
	}
	for _, s := range socks {
		addr, err := tunnel.ParseSocks(s)
		if err != nil {
			return nil, fmt.Errorf("-D: %v", err)
		}
		cfg.Socks = append(cfg.Socks, addr)
	}
	return cfg, nil
}
