package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// meterInterval is how often the progress line is redrawn.
const meterInterval = 250 * time.Millisecond

// isTerminal reports whether w is a terminal (a character device), the
// only place a progress line is drawn: redrawn in place, and cleared when
// its workload ends. Piped or redirected output gets none.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// meter draws the live progress line of one workload on a terminal w. A
// nil *meter draws nothing.
type meter struct {
	w      io.Writer
	label  string
	stopc  chan struct{}
	done   chan struct{}
	t0     time.Time
	n      *atomic.Int64
	bytes  bool
	width  int // of the line last drawn, so a shorter one can blank it out
	active bool
}

// meter returns the progress line for label, or nil when b draws none:
// when b.progress is not a terminal.
func (b *bencher) meter(label string) *meter {
	if b.progress == nil || !b.tty {
		return nil
	}
	return &meter{w: b.progress, label: label}
}

// start begins redrawing the line from counter n (bytes, or ops).
func (m *meter) start(n *atomic.Int64, bytes bool) {
	if m == nil {
		return
	}
	m.n, m.bytes, m.t0 = n, bytes, time.Now()
	m.stopc, m.done = make(chan struct{}), make(chan struct{})
	m.active = true
	go func() {
		defer close(m.done)
		tick := time.NewTicker(meterInterval)
		defer tick.Stop()
		for {
			select {
			case <-m.stopc:
				return
			case <-tick.C:
				m.draw()
			}
		}
	}()
}

// draw redraws the line in place: the rate so far since start.
func (m *meter) draw() {
	el := time.Since(m.t0)
	v := float64(m.n.Load()) / el.Seconds()
	var line string
	if m.bytes {
		line = fmt.Sprintf("%s  %4.1fs  %6.0f MB/s", m.label, el.Seconds(), v/1e6)
	} else {
		line = fmt.Sprintf("%s  %4.1fs  %6.0f op/s  %d ops", m.label, el.Seconds(), v, m.n.Load())
	}
	width := utf8.RuneCountInString(line)
	pad := max(m.width-width, 0)
	m.width = width
	fmt.Fprintf(m.w, "\r%s%s", line, strings.Repeat(" ", pad))
}

// stop ends the redrawing and clears the line.
func (m *meter) stop() {
	if m == nil || !m.active {
		return
	}
	m.active = false
	close(m.stopc)
	<-m.done
	if m.width > 0 {
		fmt.Fprintf(m.w, "\r%s\r", strings.Repeat(" ", m.width))
	}
}
