//go:build linux

package polymux

// Attacks on a Listener by clients that never send, or send slowly:
// thousands of silent connections, a hundred that dribble their first
// bytes one a second, and real clients that must be served meanwhile.
// The attacker's connections are bare socket descriptors, not net.Conns,
// so that the heap the tests measure is the server's alone.

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

const (
	// silentConns is how many connections that send nothing the attacks
	// open: several times MaxDetecting.
	silentConns = 5000
	// dribblers is how many connections send their first bytes one a
	// second.
	dribblers = 100
	// serveWithin bounds the time a real client waits to be served during
	// an attack: far below the DetectTimeout that could free a place.
	serveWithin = 5 * time.Second
	// perConnHeapBound is the most heap one pending connection may cost,
	// a fraction of the Session (about 130 KiB) each used to cost.
	perConnHeapBound = 4 << 10
	// heapSlack absorbs what the runtime itself allocates while the
	// connections come and go.
	heapSlack = 1 << 20
)

// attacker opens connections to a Listener as bare socket descriptors.
type attacker struct {
	t    testing.TB
	port int
	fds  []int
}

func newAttacker(t testing.TB, addr net.Addr) *attacker {
	a := &attacker{t: t, port: addr.(*net.TCPAddr).Port}
	t.Cleanup(a.closeAll)
	return a
}

// dial connects one socket to the Listener and returns its descriptor.
func (a *attacker) dial() int {
	a.t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		a.t.Fatalf("socket: %v", err)
	}
	sa := &syscall.SockaddrInet4{Port: a.port, Addr: [4]byte{127, 0, 0, 1}}
	for {
		err = syscall.Connect(fd, sa)
		// An interrupted connect goes on in the kernel; asking again
		// reports its progress.
		if err != syscall.EINTR && err != syscall.EALREADY {
			break
		}
	}
	if err != nil && err != syscall.EISCONN {
		syscall.Close(fd)
		a.t.Fatalf("connect: %v", err)
	}
	a.fds = append(a.fds, fd)
	return fd
}

func (a *attacker) closeAll() {
	for _, fd := range a.fds {
		syscall.Close(fd)
	}
	a.fds = nil
}

// localPort is the port of a socket, as the server sees it remotely.
func localPort(t testing.TB, fd int) int {
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return sa.(*syscall.SockaddrInet4).Port
}

// writeAll writes b to a socket, ignoring a connection the server closed.
func writeAll(fd int, b []byte) {
	for len(b) > 0 {
		n, err := syscall.Write(fd, b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return
		}
		b = b[n:]
	}
}

// dribble sends first to every socket, one byte a second, until every
// byte is sent or stop is closed. It returns a function that waits for it.
func dribble(fds []int, first []byte, stop <-chan struct{}) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for i := range first {
			for _, fd := range fds {
				writeAll(fd, first[i:i+1])
			}
			if i == len(first)-1 {
				return
			}
			select {
			case <-tick.C:
			case <-stop:
				return
			}
		}
	}()
	return func() { <-done }
}

// needFiles skips the test if this process may not open n descriptors.
// Go raises the soft limit to the hard one at start, so only a hard limit
// below n skips.
func needFiles(t testing.TB, n int) {
	t.Helper()
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		t.Fatal(err)
	}
	if r.Cur < uint64(n) {
		t.Skipf("RLIMIT_NOFILE is %d (hard limit %d); this test holds about %d descriptors: raise the hard limit (ulimit -Hn) to run it", r.Cur, r.Max, n)
	}
}

// pendingGoroutines counts the goroutines of pending connections, and how
// many of them are blocked on their socket.
func pendingGoroutines() (all, blocked int) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if !bytes.Contains(g, []byte("polymux.(*Listener).prepare")) {
			continue
		}
		all++
		if head, _, _ := bytes.Cut(g, []byte("\n")); bytes.Contains(head, []byte("[IO wait")) {
			blocked++
		}
	}
	return all, blocked
}

// memory is the live heap after a full collection and the goroutine
// stacks in use.
type memory struct{ heap, stacks uint64 }

func measure() memory {
	h := heapAfterGC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return memory{h, m.StackInuse}
}

func grown(from, to uint64) uint64 {
	if to > from {
		return to - from
	}
	return 0
}

// floodSilent opens silentConns connections that send nothing. The first
// MaxDetecting of them fill the Listener, and the heap and stacks they
// add give the cost of one pending connection; each further one must
// evict the oldest, with the heap staying within MaxDetecting times that
// cost.
func floodSilent(t *testing.T, l *Listener, atk *attacker, base memory) {
	t.Helper()
	maxDet := l.cfg.MaxDetecting
	open := func(n int) {
		for i := 0; i < n; {
			// In batches the Listener keeps up with, so that the kernel's
			// listen backlog never overflows (an overflow delays a connect
			// by a retransmission).
			batch := min(256, n-i)
			for range batch {
				atk.dial()
			}
			i += batch
			want := len(atk.fds)
			eventually(t, 30*time.Second, "the listener to accept the silent connections", func() bool {
				pending, _, evicted, _ := listenerState(l)
				return pending+int(evicted) >= want
			})
		}
	}
	settled := func(what string) {
		eventually(t, 30*time.Second, what, func() bool {
			all, blocked := pendingGoroutines()
			return all == maxDet && blocked == maxDet
		})
	}

	start := time.Now()
	open(maxDet)
	settled("every pending connection's goroutine to block on its socket")
	full := measure()
	per := memory{grown(base.heap, full.heap) / uint64(maxDet), grown(base.stacks, full.stacks) / uint64(maxDet)}
	t.Logf("%d pending connections: heap +%s (%d B each), stacks +%s (%d B each)",
		maxDet, sizeMiB(grown(base.heap, full.heap)), per.heap, sizeMiB(grown(base.stacks, full.stacks)), per.stacks)

	open(silentConns - maxDet)
	settled("the goroutines of evicted connections to end")
	pending, _, evicted, _ := listenerState(l)
	if pending != maxDet || evicted != uint64(silentConns-maxDet) {
		t.Fatalf("after %d silent connections: %d pending, %d evicted; want %d and %d", silentConns, pending, evicted, maxDet, silentConns-maxDet)
	}
	held := measure()
	bound := uint64(maxDet)*per.heap + heapSlack
	t.Logf("%d silent connections held (%d evicted) in %v: heap +%s, bound %s (MaxDetecting × %d B + %s); stacks +%s",
		silentConns, evicted, time.Since(start).Round(time.Millisecond), sizeMiB(grown(base.heap, held.heap)), sizeMiB(bound), per.heap,
		sizeMiB(heapSlack), sizeMiB(grown(base.stacks, held.stacks)))
	if g := grown(base.heap, held.heap); g > bound {
		t.Errorf("with %d silent connections held the heap grew by %s, more than %s", silentConns, sizeMiB(g), sizeMiB(bound))
	}
	if per.heap > perConnHeapBound {
		t.Errorf("a pending connection costs %d B of heap, more than %d", per.heap, perConnHeapBound)
	}
}

// app is an application on a Listener: it accepts sessions (while
// accepting is allowed) and echoes every stream.
type app struct {
	gate    chan struct{} // closed to let Accept be called
	changed chan struct{} // signalled when a session is accepted
	done    chan struct{} // closed when the accept loop ends
	mu      sync.Mutex    // guards the fields below
	ports   map[int]bool  // remote ports of accepted sessions
	waits   []func()
	all     []*Session
}

func runApp(t testing.TB, ln *Listener, accepting bool) *app {
	a := &app{gate: make(chan struct{}), ports: map[int]bool{}, changed: make(chan struct{}, 1), done: make(chan struct{})}
	if accepting {
		close(a.gate)
	}
	go func() {
		defer close(a.done)
		select {
		case <-a.gate:
		case <-ln.done:
			return
		}
		for {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			wait := serve(s, echo)
			a.mu.Lock()
			a.ports[s.RemoteAddr().(*net.TCPAddr).Port] = true
			a.all = append(a.all, s)
			a.waits = append(a.waits, wait)
			a.mu.Unlock()
			notify(a.changed)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-a.done
		for _, s := range a.all {
			s.Close()
		}
		for _, w := range a.waits {
			w()
		}
	})
	return a
}

func (a *app) accepted(port int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ports[port]
}

// realClient connects a client of proto (over TLS when tlsConf is set),
// opens a stream and checks its echo. It returns how long that took.
func realClient(addr string, proto Protocol, tlsConf *tls.Config) (time.Duration, error) {
	start := time.Now()
	cfg := &Config{Protocol: proto}
	var s *Session
	var err error
	if tlsConf != nil {
		s, err = DialTLS("tcp", addr, tlsConf, cfg)
	} else {
		s, err = Dial("tcp", addr, cfg)
	}
	if err != nil {
		return 0, err
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := s.OpenStream(ctx)
	if err != nil {
		return 0, err
	}
	if err := roundTrip(st, randomBytes(4<<10)); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// serveRealClients checks that a real client of every protocol is served
// within serveWithin.
func serveRealClients(t *testing.T, addr string, tlsConf *tls.Config) {
	t.Helper()
	for _, p := range protocols {
		took, err := realClient(addr, p, tlsConf)
		if err != nil {
			t.Fatalf("real %v client: %v", p, err)
		}
		t.Logf("real %v client served in %v", p, took.Round(time.Microsecond))
		if took > serveWithin {
			t.Errorf("real %v client served in %v, more than %v", p, took, serveWithin)
		}
	}
}

func TestListenerSilentAndSlowClientsBlockNobody(t *testing.T) {
	needFiles(t, silentConns+defaultMaxDetecting+2*dribblers+500)
	for _, overTLS := range []bool{false, true} {
		name := "tcp"
		if overTLS {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) {
			checkLeaks(t)
			cfg := &Config{DetectTimeout: time.Minute}
			var ln *Listener
			var err error
			var tlsConf *tls.Config
			if overTLS {
				cert := selfSigned(t)
				ln, err = ListenTLS("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}}, cfg)
				tlsConf = clientTLS(cert)
			} else {
				ln, err = Listen("tcp", "127.0.0.1:0", cfg)
			}
			if err != nil {
				t.Fatal(err)
			}
			a := runApp(t, ln, true)
			atk := newAttacker(t, ln.Addr())
			base := measure()

			floodSilent(t, ln, atk, base)

			var slow []int
			for range dribblers {
				slow = append(slow, atk.dial())
			}
			first := yamuxPing[:4]
			if overTLS {
				first = tlsRecordStart
			}
			stop := make(chan struct{})
			wait := dribble(slow, first, stop)
			defer wait()
			defer close(stop)

			serveRealClients(t, ln.Addr().String(), tlsConf)

			if overTLS {
				return // a TLS dribbler is dropped at DetectTimeout: TestListenerDropsSlowClientsAtDetectTimeout
			}
			// A client sending one byte a second is detected after
			// DetectLen of them, blocking nobody meanwhile.
			began := time.Now()
			for _, fd := range slow {
				port := localPort(t, fd)
				for !a.accepted(port) {
					select {
					case <-a.changed:
					case <-time.After(30 * time.Second):
						t.Fatalf("a dribbling client was not served within 30 s")
					}
				}
			}
			t.Logf("every dribbling client detected and served %v after the real clients", time.Since(began).Round(time.Millisecond))
		})
	}
}

// acceptQueue is how many connections the kernel holds for ln that
// nobody has accepted yet.
func acceptQueue(t testing.TB, ln net.Listener) int {
	t.Helper()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info syscall.TCPInfo
	var errno syscall.Errno
	err = rc.Control(func(fd uintptr) {
		size := uint32(unsafe.Sizeof(info))
		_, _, errno = syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
	})
	if err == nil && errno != 0 {
		err = errno
	}
	if err != nil {
		t.Fatalf("TCP_INFO: %v", err)
	}
	// On a listening socket, tcpi_unacked is the accept queue's length.
	return int(info.Unacked)
}

func TestListenerApplicationThatStopsAcceptingPausesOnlyAtTheReadyBound(t *testing.T) {
	const queued = 500 // connections made while accepting is paused
	needFiles(t, silentConns+defaultMaxDetecting+2*dribblers+2*maxReadySessions+queued+500)
	checkLeaks(t)
	ln, err := Listen("tcp", "127.0.0.1:0", &Config{DetectTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	a := runApp(t, ln, false) // calls no Accept until the gate opens
	atk := newAttacker(t, ln.Addr())
	base := measure()

	// Nobody accepts, yet silent connections keep being evicted and the
	// heap stays within MaxDetecting of them.
	floodSilent(t, ln, atk, base)

	var slow []int
	for range dribblers {
		slow = append(slow, atk.dial())
	}
	stop := make(chan struct{})
	wait := dribble(slow, yamuxPing[:4], stop)
	defer wait()
	defer close(stop)

	// Clients that are served at once fill the ready sessions; the next
	// connection accepted finds no room, and accepting pauses.
	for range maxReadySessions {
		writeAll(atk.dial(), yamuxPing)
	}
	eventually(t, 30*time.Second, "the ready sessions to fill", func() bool {
		_, ready, _, _ := listenerState(ln)
		return ready == maxReadySessions
	})
	atk.dial()
	eventually(t, 30*time.Second, "accepting to pause", func() bool {
		_, _, _, paused := listenerState(ln)
		return paused
	})
	pending, _, evicted, _ := listenerState(ln)
	inQueue := acceptQueue(t, ln.inner)
	full := measure()

	// While paused, new connections wait in the kernel and cost the
	// server nothing; then real clients queue behind them.
	for range queued {
		atk.dial()
	}
	eventually(t, 30*time.Second, "the connections made while paused to queue in the kernel", func() bool {
		return acceptQueue(t, ln.inner) == inQueue+queued
	})
	paused := measure()
	t.Logf("paused with %d ready sessions (heap +%s over the flood, %d B per session); %d connections queued in the kernel added %s",
		maxReadySessions, sizeMiB(grown(base.heap, full.heap)), grown(base.heap, full.heap)/maxReadySessions,
		inQueue+queued, sizeMiB(grown(full.heap, paused.heap)))
	if g := grown(full.heap, paused.heap); g > heapSlack {
		t.Errorf("%d connections made while paused grew the heap by %s", queued, sizeMiB(g))
	}
	type result struct {
		proto Protocol
		took  time.Duration
		err   error
	}
	results := make(chan result, len(protocols))
	for _, p := range protocols {
		go func() {
			took, err := realClient(ln.Addr().String(), p, nil)
			results <- result{p, took, err}
		}()
	}
	eventually(t, 30*time.Second, "the real clients to queue in the kernel", func() bool {
		return acceptQueue(t, ln.inner) == inQueue+queued+len(protocols)
	})
	nowPending, _, nowEvicted, stillPaused := listenerState(ln)
	if !stillPaused || nowPending != pending || nowEvicted != evicted {
		t.Fatalf("while paused: pending %d → %d, evicted %d → %d, paused %v", pending, nowPending, evicted, nowEvicted, stillPaused)
	}

	// Accepting again serves every client that waited.
	resumed := time.Now()
	close(a.gate)
	for range protocols {
		select {
		case r := <-results:
			if r.err != nil {
				t.Fatalf("real %v client: %v", r.proto, r.err)
			}
			t.Logf("real %v client served %v after Accept resumed (%v in all)", r.proto, time.Since(resumed).Round(time.Millisecond), r.took.Round(time.Millisecond))
		case <-time.After(serveWithin):
			t.Fatalf("real clients not served within %v after Accept resumed", serveWithin)
		}
	}
	eventually(t, 30*time.Second, "the listener to accept every queued connection", func() bool {
		return acceptQueue(t, ln.inner) == 0
	})
}
