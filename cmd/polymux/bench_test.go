package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/polymux/polymux"
	"github.com/polymux/polymux/internal/loopback"
)

// checkLeaks fails the test if goroutines started during it are still
// running shortly after it ends. Call it first, so its cleanup runs last.
func checkLeaks(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("goroutine leak: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func TestWorkloads(t *testing.T) {
	const d = 200 * time.Millisecond
	ctx := context.Background()
	workloads := []struct {
		name string
		run  func(transport) (*workloadResult, error)
	}{
		{"bulk1", func(tr transport) (*workloadResult, error) { return runBulk(ctx, tr, 1, 65536, d, nil) }},
		{"bulk8", func(tr transport) (*workloadResult, error) { return runBulk(ctx, tr, 8, 65536, d, nil) }},
		{"bulk8small", func(tr transport) (*workloadResult, error) { return runBulk(ctx, tr, 8, 100, d, nil) }},
		{"rpc", func(tr transport) (*workloadResult, error) { return runRPC(ctx, tr, d, nil) }},
	}
	for _, w := range workloads {
		t.Run(w.name+"/polymux", func(t *testing.T) {
			checkLeaks(t)
			mt, err := newMuxTransport(polymux.Yamux)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			r, err := w.run(mt)
			took := time.Since(start)
			mt.settle(2 * time.Second)
			cs, ss := mt.client.NumStreams(), mt.server.NumStreams()
			if err := mt.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			checkResult(t, r, w.name, took, d)
			if cs != 0 || ss != 0 {
				t.Errorf("streams still open after the workload: client %d, server %d", cs, ss)
			}
		})
		t.Run(w.name+"/tcp", func(t *testing.T) {
			checkLeaks(t)
			tt, err := loopback.NewTCP()
			if err != nil {
				t.Fatal(err)
			}
			defer tt.Close()
			start := time.Now()
			r, err := w.run(tt)
			if err != nil {
				t.Fatal(err)
			}
			checkResult(t, r, w.name, time.Since(start), d)
		})
	}
}

// TestMeasureEndsAStuckWorkload checks the watchdog of measure: a workload
// that blocks past its drain timeout has its transport closed and fails.
func TestMeasureEndsAStuckWorkload(t *testing.T) {
	checkLeaks(t)
	tt, err := loopback.NewTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer tt.Close()
	b := &bencher{duration: 10 * time.Millisecond, drain: 100 * time.Millisecond}
	stuck := workload{name: "stuck", run: func(ctx context.Context, tr transport, _ *atomic.Int64) (*workloadResult, error) {
		c, err := tr.Accept(ctx) // nobody dials: only the watchdog ends this
		if err == nil {
			c.Close()
		}
		return nil, err
	}}
	start := time.Now()
	if _, err := b.measure(stuck, tt, "stuck"); err == nil {
		t.Fatal("a stuck workload succeeded")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the stuck workload ended after %v", took)
	}
}

func checkResult(t *testing.T, r *workloadResult, name string, took, d time.Duration) {
	t.Helper()
	t.Logf("%s: %+v in %v", name, *r, took)
	if strings.HasPrefix(name, "rpc") {
		if r.Ops <= 0 || r.OpsPerSec <= 0 || r.P50 <= 0 || r.P99 < r.P50 {
			t.Errorf("rpc result %+v: want ops > 0 and 0 < p50 <= p99", *r)
		}
	} else if r.Bytes <= 0 || r.MBps <= 0 {
		t.Errorf("bulk result %+v: want bytes > 0", *r)
	}
	if r.Seconds < d.Seconds() {
		t.Errorf("measured %.3fs, shorter than the duration %v", r.Seconds, d)
	}
	if took > d+2*time.Second {
		t.Errorf("workload took %v for a %v duration: it did not stop promptly", took, d)
	}
}

func TestBenchCommand(t *testing.T) {
	checkLeaks(t)
	var out, errb bytes.Buffer
	code := benchMain([]string{"-duration", "100ms", "-streams", "4"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit status %d\nstdout:\n%s\nstderr:\n%s", code, &out, &errb)
	}
	t.Logf("stdout:\n%s", &out)
	for _, want := range []string{
		"polymux bench: protocol yamux",
		"bulk writes of 32 KiB and 1 MiB",
		"workload", "polymux", "raw TCP", "ratio",
		"bulk 1 stream, 32 KiB writes", "bulk 1 stream, 1 MiB writes",
		"bulk 4 streams, 32 KiB writes", "bulk 4 streams, 1 MiB writes",
		"rpc open+echo", "p50", "p99",
		"session",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "error") {
		t.Errorf("output reports an error")
	}
	// errb is no terminal: no progress line.
	if strings.Contains(errb.String(), "\r") || strings.Contains(out.String(), "\r") {
		t.Errorf("progress drawn on a writer that is not a terminal: stderr %q", &errb)
	}
}

func TestBenchJSON(t *testing.T) {
	checkLeaks(t)
	var out, errb bytes.Buffer
	code := benchMain([]string{"-json", "-duration", "100ms", "-streams", "2", "-size", "1000,2k"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit status %d\nstdout:\n%s\nstderr:\n%s", code, &out, &errb)
	}
	var doc benchOutput
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, &out)
	}
	if len(doc.Runs) != 1 || doc.Runs[0].Protocol != "yamux" || len(doc.Runs[0].Workloads) != 5 {
		t.Fatalf("unexpected document:\n%s", &out)
	}
	wantNames := []string{
		"bulk 1 stream, 1000 B writes", "bulk 1 stream, 2 KiB writes",
		"bulk 2 streams, 1000 B writes", "bulk 2 streams, 2 KiB writes",
		"rpc open+echo",
	}
	wantSizes := []int{1000, 2048, 1000, 2048, 0}
	for i, w := range doc.Runs[0].Workloads {
		if w.Polymux == nil || w.TCP == nil || w.Ratio <= 0 || w.Error != "" {
			t.Errorf("workload %q: incomplete result %+v", w.Name, w)
		}
		if w.Name != wantNames[i] || w.WriteSize != wantSizes[i] {
			t.Errorf("workload %d: %q with %d-byte writes, want %q with %d", i, w.Name, w.WriteSize, wantNames[i], wantSizes[i])
		}
	}
	if doc.Streams != 2 || doc.WriteSize != 0 || !slices.Equal(doc.WriteSizes, []int{1000, 2048}) {
		t.Errorf("flags not recorded: %+v", doc)
	}
	if strings.Contains(errb.String(), "\r") {
		t.Errorf("progress drawn on a writer that is not a terminal: stderr %q", &errb)
	}
}

// TestBenchJSONOneSize checks that a single -size is recorded as
// write_size too, as before there could be several.
func TestBenchJSONOneSize(t *testing.T) {
	checkLeaks(t)
	var out, errb bytes.Buffer
	code := benchMain([]string{"-json", "-duration", "50ms", "-streams", "2", "-size", "1000"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit status %d\nstdout:\n%s\nstderr:\n%s", code, &out, &errb)
	}
	var doc benchOutput
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, &out)
	}
	if len(doc.Runs) != 1 || len(doc.Runs[0].Workloads) != 3 {
		t.Fatalf("unexpected document:\n%s", &out)
	}
	if doc.WriteSize != 1000 || !slices.Equal(doc.WriteSizes, []int{1000}) {
		t.Errorf("flags not recorded: %+v", doc)
	}
}

func TestSizeFlag(t *testing.T) {
	for spec, want := range map[string][]int{
		"65536":               {65536},
		"32k,1m":              {32 << 10, 1 << 20},
		"32KiB, 32768 ,1MiB":  {32 << 10, 1 << 20},
		"1M,100,1k":           {1 << 20, 100, 1 << 10},
		"64m":                 {64 << 20},
		"1000,1000,1000,2000": {1000, 2000},
	} {
		var s sizeList
		if err := s.Set(spec); err != nil || !slices.Equal(s, want) {
			t.Errorf("-size %q: %v, %v; want %v", spec, s, err, want)
		}
	}
	for _, spec := range []string{"", "0", "-5", "x", "1,", "k", "32kb", "65m", "99999999999999999999"} {
		var s sizeList
		if err := s.Set(spec); err == nil {
			t.Errorf("-size %q: accepted as %v", spec, s)
		}
	}
	if got := sizeNames([]int{1000, 32 << 10, 1 << 20}); got != "1000 B, 32 KiB and 1 MiB" {
		t.Errorf("sizeNames: %q", got)
	}
}

// TestProgressOnTerminal runs a workload with the bencher told its
// progress writer is a terminal: the line is drawn (over \r) and cleared
// at the end.
func TestProgressOnTerminal(t *testing.T) {
	checkLeaks(t)
	tt, err := loopback.NewTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer tt.Close()
	var errb bytes.Buffer
	b := &bencher{duration: 3 * meterInterval, drain: drainTimeout, progress: &errb, tty: true, sizes: []int{32 << 10}}
	w := b.workloads()[0]
	if _, err := b.measure(w, tt, "label"); err != nil {
		t.Fatal(err)
	}
	got := errb.String()
	if !strings.Contains(got, "\rlabel ") || !strings.Contains(got, " MB/s") {
		t.Errorf("no progress line drawn on a terminal: %q", got)
	}
	if !strings.HasSuffix(got, " \r") {
		t.Errorf("progress line not cleared at the end: %q", got)
	}
}

// TestNoProgressOffTerminal runs a workload with the bencher told its
// progress writer is no terminal: nothing is written to it.
func TestNoProgressOffTerminal(t *testing.T) {
	checkLeaks(t)
	tt, err := loopback.NewTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer tt.Close()
	var errb bytes.Buffer
	b := &bencher{duration: 2 * meterInterval, drain: drainTimeout, progress: &errb, sizes: []int{32 << 10}}
	if m := b.meter("label"); m != nil {
		t.Errorf("a meter for a writer that is no terminal")
	}
	if _, err := b.measure(b.workloads()[0], tt, "label"); err != nil {
		t.Fatal(err)
	}
	if errb.Len() != 0 {
		t.Errorf("progress written to a writer that is no terminal: %q", &errb)
	}
}

func TestIsTerminal(t *testing.T) {
	if isTerminal(new(bytes.Buffer)) {
		t.Error("a bytes.Buffer is a terminal")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if isTerminal(w) {
		t.Error("a pipe is a terminal")
	}
}

func TestBenchAllProtocols(t *testing.T) {
	checkLeaks(t)
	var out, errb bytes.Buffer
	code := benchMain([]string{"-protocol", "all", "-duration", "50ms", "-streams", "2"}, &out, &errb)
	// This test checks the command, not every protocol: a workload that
	// fails is logged, and must make the exit status 1 with the error in
	// the table.
	failed := strings.Contains(out.String(), "error: ")
	if failed {
		t.Logf("a workload failed (exit status %d):\n%s", code, &out)
	}
	if want := map[bool]int{false: 0, true: 1}[failed]; code != want {
		t.Fatalf("exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", code, want, &out, &errb)
	}
	for _, p := range allProtocols {
		if !strings.Contains(out.String(), fmt.Sprintf("polymux bench: protocol %v ", p)) {
			t.Errorf("protocol %v: no table\n%s", p, &out)
		}
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string // in stdout+stderr
	}{
		{nil, 2, "bench"},
		{[]string{"-h"}, 0, "bench"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"bench", "-h"}, 0, "-duration"},
		{[]string{"help", "bench"}, 0, "-streams"},
		{[]string{"bench", "-protocol", "carrier-pigeon"}, 2, "unknown protocol"},
		{[]string{"bench", "-streams", "0"}, 2, "-streams"},
		{[]string{"bench", "-size", "0"}, 2, "-size"},
		{[]string{"bench", "-h"}, 0, "32768,1048576"},
		{[]string{"bench", "extra"}, 2, "unexpected argument"},
		{[]string{"tunnel"}, 2, "tunnel server -listen"},
		{[]string{"help", "tunnel"}, 0, "tunnel client -server"},
		{[]string{"tunnel", "client", "-h"}, 0, "-fingerprint"},
		{[]string{"tunnel", "server", "-h"}, 0, "-allow-reverse"},
		{[]string{"tunnel", "server", "-listen", "127.0.0.1:0"}, 2, "-token-file is required"},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		all := out.String() + errb.String()
		if code != tc.code || !strings.Contains(all, tc.want) {
			t.Errorf("run(%q) = %d, output %q; want %d and output containing %q", tc.args, code, all, tc.code, tc.want)
		}
	}
}
