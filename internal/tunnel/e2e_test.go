package tunnel

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The end-to-end tests build the polymux command and run servers and
// clients as a user would, on 127.0.0.1, with the test as the user. Every
// wait is for an event (a log line, a port answering, an exit) and is
// bounded by e2eWait.
const e2eWait = 20 * time.Second

// buildPolymux builds the command (without -race, to keep it quick) into
// dir and returns its path.
func buildPolymux(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "polymux")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/polymux/polymux/cmd/polymux")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proc is a running polymux process whose JSON log lines are collected.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd

	mu      sync.Mutex // guards lines, raw and changed
	lines   []map[string]any
	raw     []string
	changed chan struct{}

	exited chan struct{} // closed once the process has exited and its log is read
	code   int           // its exit status, once exited is closed
}

// start runs bin with args (and -log-format json) and collects its log.
func start(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, changed: make(chan struct{}), exited: make(chan struct{})}
	p.cmd = exec.Command(bin, append(args, "-log-format", "json")...)
	dieWithTest(p.cmd)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var m map[string]any
			json.Unmarshal(sc.Bytes(), &m) // a line that is not JSON (an error message) keeps m nil
			p.mu.Lock()
			p.raw = append(p.raw, sc.Text())
			if m != nil {
				p.lines = append(p.lines, m)
			}
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
		err := p.cmd.Wait()
		p.code = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		}
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", p.name, p.log())
		}
	})
	return p
}

// log is everything the process wrote on stderr.
func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.raw, "\n")
}

// matches reports whether a log line has msg and every attr (by key, as
// a substring of its value).
func matches(m map[string]any, msg string, attrs []string) bool {
	if m["msg"] != msg {
		return false
	}
	for i := 0; i+1 < len(attrs); i += 2 {
		if !strings.Contains(fmt.Sprint(m[attrs[i]]), attrs[i+1]) {
			return false
		}
	}
	return true
}

// count is how many log lines match.
func (p *proc) count(msg string, attrs ...string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, m := range p.lines {
		if matches(m, msg, attrs) {
			n++
		}
	}
	return n
}

// waitN waits for the n-th log line with msg and attrs (key, value
// substring, ...) and returns it.
func (p *proc) waitN(n int, msg string, attrs ...string) map[string]any {
	p.t.Helper()
	deadline := time.NewTimer(e2eWait)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		seen := 0
		for _, m := range p.lines {
			if matches(m, msg, attrs) {
				if seen++; seen == n {
					p.mu.Unlock()
					return m
				}
			}
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-p.exited:
			if p.count(msg, attrs...) >= n {
				continue
			}
			p.t.Fatalf("%s exited (status %d) before logging %q %v", p.name, p.code, msg, attrs)
		case <-deadline.C:
			p.t.Fatalf("%s did not log %q %v within %v", p.name, msg, attrs, e2eWait)
		}
	}
}

// waitLog waits for the first log line with msg and attrs.
func (p *proc) waitLog(msg string, attrs ...string) map[string]any {
	p.t.Helper()
	return p.waitN(1, msg, attrs...)
}

// str is a string attribute of a log line.
func str(m map[string]any, key string) string { s, _ := m[key].(string); return s }

// waitExit waits for the process to exit and returns its status.
func (p *proc) waitExit() int {
	p.t.Helper()
	select {
	case <-p.exited:
		return p.code
	case <-time.After(e2eWait):
		p.t.Fatalf("%s did not exit within %v", p.name, e2eWait)
		return -1
	}
}

// signal sends sig to the process.
func (p *proc) signal(sig os.Signal) {
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// e2e is the set-up every end-to-end test shares: the binary, a token
// file, and the flags that keep timings short.
type e2e struct {
	t     *testing.T
	bin   string
	dir   string
	token string
}

// fast are the flags that make failures and reconnects quick.
var fast = []string{"-heartbeat", "200ms", "-heartbeat-timeout", "2s", "-drain-timeout", "5s"}

// server starts a server on addr with a state directory of its own (or
// state, if given), and returns it with its address and fingerprint.
func (e *e2e) server(name, addr, state string, extra ...string) (*proc, string, string) {
	e.t.Helper()
	if state == "" {
		state = filepath.Join(e.t.TempDir(), "state")
	}
	args := append([]string{"tunnel", "server", "-listen", addr, "-token-file", e.token, "-state-dir", state}, fast...)
	p := start(e.t, name, e.bin, append(args, extra...)...)
	fp := str(p.waitLog("server fingerprint"), "fingerprint")
	return p, str(p.waitLog("listening"), "addr"), fp
}

// client starts a client of server trusting fp, with forwards and flags in extra.
func (e *e2e) client(name, server, fp string, extra ...string) *proc {
	e.t.Helper()
	args := append([]string{"tunnel", "client", "-server", server, "-token-file", e.token, "-fingerprint", fp,
		"-backoff-min", "50ms", "-backoff-max", "500ms"}, fast...)
	return start(e.t, name, e.bin, append(args, extra...)...)
}

// localBind is where the client's -L (or -D, target "") listens.
func localBind(c *proc, target string) string {
	if target == "" {
		return str(c.waitLog("socks listening"), "bind")
	}
	return str(c.waitLog("forward listening", "target", target), "bind")
}

// httpBlob serves size deterministic bytes at /blob and returns the
// server's address and the bytes' SHA-256.
func httpBlob(t *testing.T, size int) (string, [32]byte) {
	blob := make([]byte, size)
	for i := range blob {
		blob[i] = byte(i*31 + i>>11)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(blob) }))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), sha256.Sum256(blob)
}

// getHash downloads http://addr/blob and returns the SHA-256 of the body.
func getHash(addr string) ([32]byte, int64, error) {
	cl := &http.Client{Timeout: e2eWait, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := cl.Get("http://" + addr + "/blob")
	if err != nil {
		return [32]byte{}, 0, err
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, n, err
}

func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the polymux command")
	}
	dir := t.TempDir()
	e := &e2e{t: t, bin: buildPolymux(t, dir), dir: dir, token: filepath.Join(dir, "token")}
	if err := os.WriteFile(e.token, []byte("  correct horse battery staple\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Run("forwards", e.testForwards)
	t.Run("refusals", e.testRefusals)
	t.Run("restart", e.testRestart)
	t.Run("sigterm drains", e.testSIGTERM)
	t.Run("bad input exits 2", e.testBadInput)
}

// testForwards: -L to HTTP (5 MiB by hash), -R to echo (1 MiB), -D
// through SOCKS5, a half-close with a 3 MiB echo, and 200 concurrent
// connections of 256 KiB, all on one server and one client.
func (e *e2e) testForwards(t *testing.T) {
	e.t = t
	httpAddr, want := httpBlob(t, 5<<20)
	echo := echoServer(t)
	srv, addr, fp := e.server("server", "127.0.0.1:0", "", "-stats", "200ms")
	cli := e.client("client", addr, fp,
		"-L", "0:"+httpAddr, "-L", "127.0.0.1:0:"+echo, "-R", "0:"+echo, "-D", "0", "-stats", "200ms")
	cli.waitLog("session up")
	srv.waitLog("session up")
	rev := str(cli.waitLog("reverse forward listening"), "bind")

	t.Run("L to HTTP 5 MiB by hash", func(t *testing.T) {
		got, n, err := getHash(localBind(cli, httpAddr))
		if err != nil || got != want {
			t.Errorf("download of %d bytes: hash match %v, %v", n, got == want, err)
		}
	})
	t.Run("R to echo 1 MiB", func(t *testing.T) {
		if err := echoThrough(t, rev, 1<<20); err != nil {
			t.Error(err)
		}
	})
	t.Run("D through SOCKS5", func(t *testing.T) {
		socks := localBind(cli, "")
		_, port, _ := net.SplitHostPort(echo)
		targets := []string{echo, "localhost:" + port}
		if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
			ln.Close()
			targets = append(targets, echoServerOn(t, "[::1]:0"))
		}
		for _, target := range targets {
			c, code, err := socksDial(socks, target)
			if err != nil || code != 0 {
				t.Errorf("%s: reply %#x, %v", target, code, err)
				continue
			}
			c.SetDeadline(time.Now().Add(e2eWait))
			msg := []byte("via socks to " + target)
			c.Write(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				t.Errorf("%s: echo %q, %v", target, got, err)
			}
			c.Close()
		}
		if _, code, err := socksDial(socks, closedPort(t)); err != nil || code != socksRefused {
			t.Errorf("a closed port: reply %#x, %v; want 0x05", code, err)
		}
	})
	t.Run("half-close 3 MiB", func(t *testing.T) {
		if err := echoThrough(t, localBind(cli, echo), 3<<20); err != nil {
			t.Error(err)
		}
	})
	t.Run("200 concurrent 256 KiB", func(t *testing.T) {
		bind := localBind(cli, echo)
		errs := make(chan error, 200)
		for range 200 {
			go func() { errs <- echoThrough(t, bind, 256<<10) }()
		}
		failed := 0
		for range 200 {
			if err := <-errs; err != nil {
				if failed++; failed <= 3 {
					t.Error(err)
				}
			}
		}
		if failed > 0 {
			t.Errorf("%d of 200 connections failed", failed)
		}
	})
	t.Run("stats are logged", func(t *testing.T) {
		for _, p := range []*proc{srv, cli} {
			m := p.waitLog("stats")
			if _, ok := m["bytes_sent"]; !ok {
				t.Errorf("%s stats line lacks bytes_sent: %v", p.name, m)
			}
		}
	})
	if n := srv.count("session up"); n != 1 {
		t.Errorf("%d sessions on the server, want 1: forwards must not cost a session", n)
	}
}

// closedPort is an address on 127.0.0.1 where nothing listens.
func closedPort(t *testing.T) string {
	return "127.0.0.1:" + freePort(t)
}

// testRefusals: a wrong token, a wrong fingerprint, and -R and -L outside
// the policy are refused, logged, and nothing gets through.
func (e *e2e) testRefusals(t *testing.T) {
	e.t = t
	echo := echoServer(t)
	srv, addr, fp := e.server("server", "127.0.0.1:0", "", "-allow-forward", "127.0.0.1:1-1024,[::1]:1-1024")

	t.Run("wrong token", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad-token")
		os.WriteFile(bad, []byte("not the token"), 0o600)
		args := append([]string{"tunnel", "client", "-server", addr, "-token-file", bad, "-fingerprint", fp, "-L", "0:" + echo}, fast...)
		cli := start(t, "client", e.bin, args...)
		if code := cli.waitExit(); code == 0 {
			t.Error("a client with the wrong token exited 0")
		}
		if !strings.Contains(cli.log(), "authentication failed") {
			t.Errorf("the client does not say why: %s", cli.log())
		}
		line := srv.waitLog("authentication failed")
		if !strings.HasPrefix(str(line, "remote"), "127.0.0.1:") {
			t.Errorf("the server's line does not name the remote address: %v", line)
		}
		if n := srv.count("authentication failed"); n != 1 {
			t.Errorf("%d lines for one failed attempt", n)
		}
	})
	t.Run("wrong fingerprint", func(t *testing.T) {
		_, _, otherFP := e.server("other server", "127.0.0.1:0", "")
		cli := e.client("client", addr, otherFP, "-L", "0:"+echo)
		if code := cli.waitExit(); code == 0 {
			t.Error("a client that reached another key exited 0")
		}
		if !strings.Contains(cli.log(), "not the trusted") {
			t.Errorf("the client does not say why: %s", cli.log())
		}
		noPin := start(t, "client without pin", e.bin, "tunnel", "client", "-server", addr, "-token-file", e.token)
		if code := noPin.waitExit(); code == 0 || !strings.Contains(noPin.log(), "-fingerprint "+fp) {
			t.Errorf("without -fingerprint: status %d, log %s; want a refusal naming the flag to pass", code, noPin.log())
		}
	})
	if n := srv.count("session up"); n != 0 {
		t.Errorf("%d sessions came up for refused clients", n)
	}
	t.Run("R and L outside the policy", func(t *testing.T) {
		ok := echoServer(t)
		cli := e.client("client", addr, fp, "-L", "0:"+echo, "-R", "0.0.0.0:0:"+ok, "-R", "0:"+ok)
		cli.waitLog("session up")
		srv.waitLog("reverse forward refused", "bind", "0.0.0.0:0", "code", "not-allowed")
		cli.waitLog("reverse forward refused by the server", "bind", "0.0.0.0:0")
		if err := echoThrough(t, str(cli.waitLog("reverse forward listening"), "bind"), 1000); err != nil {
			t.Errorf("the client did not carry on with its allowed -R: %v", err)
		}
		// The refusal may even beat the dial's return: a reset connect is
		// as refused as a reset read.
		if c, err := net.Dial("tcp", localBind(cli, echo)); err == nil {
			c.Write([]byte("must not arrive"))
			c.SetReadDeadline(time.Now().Add(e2eWait))
			if n, err := c.Read(make([]byte, 1)); err == nil {
				t.Errorf("a refused -L read %d bytes", n)
			}
			c.Close()
		}
		srv.waitLog("forward refused by policy", "target", echo)
		cli.waitLog("forward refused by the server", "target", echo, "code", "not-allowed")
	})
}

// testRestart: kill the server, start it again with the same state
// directory: the fingerprint is the same, and within 40 s the client's
// -L and -R work again.
func (e *e2e) testRestart(t *testing.T) {
	e.t = t
	echo := echoServer(t)
	state := filepath.Join(t.TempDir(), "state")
	srv, addr, fp := e.server("server", "127.0.0.1:0", state)
	revPort := freePort(t)
	cli := e.client("client", addr, fp, "-L", "0:"+echo, "-R", revPort+":"+echo)
	cli.waitLog("reverse forward listening")
	bind := localBind(cli, echo)
	if err := echoThrough(t, bind, 1000); err != nil {
		t.Fatal(err)
	}
	srv.cmd.Process.Kill()
	srv.waitExit()
	cli.waitLog("session down")
	restarted := time.Now()
	srv2, addr2, fp2 := e.server("restarted server", addr, state)
	if addr2 != addr || fp2 != fp {
		t.Fatalf("restarted at %s with %s; was %s with %s", addr2, fp2, addr, fp)
	}
	if srv2.count("generated a new server key") != 0 {
		t.Error("the restarted server generated a new key")
	}
	cli.waitN(2, "reverse forward listening", "bind", ":"+revPort)
	if d := time.Since(restarted); d > 40*time.Second {
		t.Errorf("forwards back after %v, want within 40 s", d)
	}
	if err := echoThrough(t, bind, 100000); err != nil {
		t.Errorf("-L after the restart: %v", err)
	}
	if err := echoThrough(t, "127.0.0.1:"+revPort, 100000); err != nil {
		t.Errorf("-R after the restart: %v", err)
	}
}

// testSIGTERM: on SIGTERM both sides drain: new connections stop, a
// running one finishes, and the process exits 0; an idle one at once.
func (e *e2e) testSIGTERM(t *testing.T) {
	e.t = t
	srv, addr, fp := e.server("server", "127.0.0.1:0", "")

	// The client drains: its listener closes, the running connection ends.
	targetA, acceptedA, releaseA := gatedServer(t, 3<<20)
	c1 := e.client("client 1", addr, fp, "-L", "0:"+targetA)
	c1.waitLog("session up")
	bind := localBind(c1, targetA)
	reply := request(t, bind)
	within(t, acceptedA, "connection at the target")
	c1.signal(syscall.SIGTERM)
	c1.waitLog("draining", "running", "1")
	if c, err := net.Dial("tcp", bind); err == nil {
		c.Close()
		t.Error("the client's -L listener is open while it drains")
	}
	close(releaseA)
	if err := <-reply; err != nil {
		t.Errorf("the connection running when the client was told to stop: %v", err)
	}
	if code := c1.waitExit(); code != 0 {
		t.Errorf("client exit status %d after SIGTERM", code)
	}

	// The server drains: new connections are closed, the running one ends.
	targetB, acceptedB, releaseB := gatedServer(t, 3<<20)
	c2 := e.client("client 2", addr, fp, "-L", "0:"+targetB)
	c2.waitLog("session up")
	bind = localBind(c2, targetB)
	reply = request(t, bind)
	within(t, acceptedB, "connection at the target")
	srv.signal(syscall.SIGTERM)
	srv.waitLog("draining", "running", "1")
	c2.waitLog("server is shutting down; running connections may finish")
	if err := echoThrough(t, bind, 10); err == nil {
		t.Error("a new connection went through a draining server")
	}
	close(releaseB)
	if err := <-reply; err != nil {
		t.Errorf("the connection running when the server was told to stop: %v", err)
	}
	if code := srv.waitExit(); code != 0 {
		t.Errorf("server exit status %d after SIGTERM", code)
	}

	// An idle client exits at once.
	c2.waitLog("session down")
	start := time.Now()
	c2.signal(syscall.SIGTERM)
	if code := c2.waitExit(); code != 0 {
		t.Errorf("idle client exit status %d after SIGTERM", code)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("an idle client took %v to exit", d)
	}
}

// testBadInput: malformed forwards, a missing or empty token file, a
// local port in use and an unknown protocol end the command at start-up
// with a clear error and status 2.
func (e *e2e) testBadInput(t *testing.T) {
	e.t = t
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, []byte(" \n"), 0o600)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, busyPort, _ := net.SplitHostPort(busy.Addr().String())
	cli := func(extra ...string) []string {
		return append([]string{"tunnel", "client", "-server", "127.0.0.1:1", "-token-file", e.token, "-fingerprint", "SHA256:" + strings.Repeat("A", 43)}, extra...)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"malformed -L", cli("-L", "8080:nohostport"), "-L"},
		{"malformed -R", cli("-R", "x:host:80"), "-R"},
		{"malformed -D", cli("-D", "1:2:3"), "-D"},
		{"missing token file", []string{"tunnel", "client", "-server", "127.0.0.1:1", "-token-file", "/nonexistent/token"}, "token file"},
		{"empty token file", []string{"tunnel", "server", "-listen", "127.0.0.1:0", "-token-file", empty}, "empty"},
		{"local port in use", cli("-L", busyPort+":127.0.0.1:80"), "address already in use"},
		{"server port in use", []string{"tunnel", "server", "-listen", busy.Addr().String(), "-token-file", e.token, "-state-dir", t.TempDir()}, "address already in use"},
		{"unknown protocol", cli("-protocol", "carrier-pigeon"), "protocol"},
		{"bad fingerprint", []string{"tunnel", "client", "-server", "127.0.0.1:1", "-token-file", e.token, "-fingerprint", "MD5:xx"}, "fingerprint"},
		{"bad policy", []string{"tunnel", "server", "-listen", "127.0.0.1:0", "-token-file", e.token, "-allow-forward", "example.com:80"}, "-allow-forward"},
	} {
		p := start(t, tc.name, e.bin, tc.args...)
		if code := p.waitExit(); code != 2 || !strings.Contains(p.log(), tc.want) {
			t.Errorf("%s: status %d, output %q; want 2 and %q", tc.name, code, p.log(), tc.want)
		}
	}
	// An unreachable server is retried, not fatal.
	p := start(t, "unreachable", e.bin, cli()...)
	p.waitN(2, "connect failed")
	p.signal(syscall.SIGTERM)
	if code := p.waitExit(); code != 0 {
		t.Errorf("a client retrying an unreachable server exited %d on SIGTERM", code)
	}
}
