package tunnel

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/polymux/polymux"
)

// session is one authenticated tunnel session, on either side: the polymux
// session, its control stream and the forwarded connections running on it.
type session struct {
	mux *polymux.Session
	ctl *control
	log *slog.Logger

	relays tracker // forwarded connections running on this session

	byeOnce     sync.Once
	byeSent     chan struct{} // closed when this side said bye: its drain ends the session
	peerByeOnce sync.Once
	peerBye     chan struct{} // closed when the peer said bye
	peerDrained chan struct{} // closed when the peer said drained
	drainedOnce sync.Once
}

// newSession wraps an authenticated polymux session and its control stream.
func newSession(mux *polymux.Session, ctl *polymux.Stream, to Timeouts, log *slog.Logger) *session {
	return &session{
		mux:         mux,
		ctl:         &control{st: ctl, to: to},
		log:         log,
		byeSent:     make(chan struct{}),
		peerBye:     make(chan struct{}),
		peerDrained: make(chan struct{}),
	}
}

// handleCommon handles the control messages both sides share; it reports
// whether m was one of them.
func (s *session) handleCommon(m *message) bool {
	switch m.Type {
	case msgBye:
		s.peerByeOnce.Do(func() {
			close(s.peerBye)
			// The peer is draining: open nothing more on this session, and
			// tell it once everything of ours here has finished, so that it
			// knows every byte it sent has been taken.
			idle := s.relays.stop()
			go func() {
				select {
				case <-idle:
					s.ctl.send(&message{Type: msgDrained})
				case <-s.mux.Done():
				}
			}()
		})
		return true
	case msgDrained:
		s.drainedOnce.Do(func() { close(s.peerDrained) })
		return true
	}
	return false
}

// sayBye tells the peer this side is draining, once, and stops new
// forwarded connections on this session.
func (s *session) sayBye() {
	s.byeOnce.Do(func() {
		close(s.byeSent)
		s.relays.stop()
		s.ctl.send(&message{Type: msgBye})
	})
}

// drain ends the session gracefully with polymux's Shutdown: no new
// forwarded connection starts on either side, the running ones get until
// ctx is done to finish, and what was written is delivered before the
// session closes. It returns ctx.Err() if ctx ended first.
//
// Shutdown waits for every stream, the control stream too, so this side
// closes its control stream last: once its own connections have finished
// and the peer has said drained (it has read everything this side sent,
// and stopped opening anything). The heartbeats go on until then.
func (s *session) drain(ctx context.Context) error {
	s.sayBye()
	go func() {
		for _, quiet := range []<-chan struct{}{s.relays.stop(), s.peerDrained} {
			select {
			case <-quiet:
			case <-s.mux.Done():
				return
			}
		}
		s.ctl.st.Close()
	}()
	return s.mux.Shutdown(ctx)
}

// afterControl ends the session once its control stream has ended: at
// once, unless a drain is under way. When this side drains, its Shutdown
// ends the session. When the peer drains, the control stream's end is its
// last step: this side closes its own end so that the peer's Shutdown can
// finish, and waits for that, at most HeartbeatTimeout.
func (s *session) afterControl() {
	select {
	case <-s.byeSent:
		<-s.mux.Done()
		return
	case <-s.peerBye:
		s.ctl.st.Close()
		t := time.NewTimer(s.ctl.to.HeartbeatTimeout)
		defer t.Stop()
		select {
		case <-s.mux.Done():
		case <-t.C:
		}
	default:
	}
	s.mux.Close()
}

// serveStreams accepts the streams the peer opens and serves each on its
// own goroutine, counted as a running connection; once the session stops
// taking new ones (a drain), late streams are reset. It returns when the
// session ends.
func (s *session) serveStreams(serve func(*polymux.Stream)) {
	for {
		st, err := s.mux.AcceptStream(context.Background())
		if err != nil {
			return
		}
		if !s.relays.add() {
			st.Reset()
			continue
		}
		go func() {
			defer s.relays.done()
			serve(st)
		}()
	}
}

// logStats logs the session's Stats every interval until it ends.
func (s *session) logStats(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.mux.Done():
			return
		case <-t.C:
			st := s.mux.Stats()
			s.log.Info("stats",
				"protocol", st.Protocol.String(),
				"active_streams", st.ActiveStreams,
				"streams_opened", st.StreamsOpened,
				"streams_accepted", st.StreamsAccepted,
				"streams_refused", st.StreamsRefused,
				"bytes_sent", st.BytesSent,
				"bytes_received", st.BytesReceived,
				"buffered_bytes", st.BufferedBytes,
				"rtt", st.RTT,
				"relays", s.relays.count())
		}
	}
}

// tracker counts the forwarded connections of a session and lets a drain
// wait for them.
type tracker struct {
	mu      sync.Mutex // guards n, stopped and idle
	n       int
	stopped bool
	idle    chan struct{} // made by stop; closed once stopped and n is 0
}

// add counts one more connection, unless the tracker has stopped: then it
// reports false and the connection must not start.
func (t *tracker) add() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	t.n++
	return true
}

// done counts one connection finished.
func (t *tracker) done() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n--
	if t.stopped && t.n == 0 {
		close(t.idle)
	}
}

// stop refuses new connections from now on; the channel it returns is
// closed once none is running. Every call returns the same channel.
func (t *tracker) stop() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.stopped {
		t.stopped = true
		t.idle = make(chan struct{})
		if t.n == 0 {
			close(t.idle)
		}
	}
	return t.idle
}

// isStopped reports whether stop was called.
func (t *tracker) isStopped() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stopped
}

// count is how many connections are running.
func (t *tracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}
