package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/polymux/polymux"
)

// allProtocols is what -protocol all runs, in order.
var allProtocols = []polymux.Protocol{polymux.Yamux, polymux.SmuxV1, polymux.SmuxV2, polymux.MuxadoV2}

// benchMain is the bench command: it parses the flags, runs the suite for
// every protocol asked for and prints a table (or JSON) per protocol. It
// exits 2 on bad flags, 1 if any workload failed, and 0 otherwise.
func benchMain(args []string, stdout, stderr io.Writer) int {
	b, protos, jsonOut, code := parseBenchFlags(args, stderr)
	if b == nil {
		return code
	}
	out := benchOutput{
		GOMAXPROCS:      runtime.GOMAXPROCS(0),
		DurationSeconds: b.duration.Seconds(),
		Streams:         b.streams,
		WriteSizes:      b.sizes,
	}
	if len(b.sizes) == 1 {
		out.WriteSize = b.sizes[0]
	}
	failed := false
	for i, p := range protos {
		rep := b.runProtocol(p)
		out.Runs = append(out.Runs, rep)
		for _, w := range rep.Workloads {
			if w.Error != "" {
				failed = true
				fmt.Fprintf(stderr, "polymux bench: %v: %s: %s\n", p, w.Name, w.Error)
			}
		}
		if !jsonOut {
			if i > 0 {
				fmt.Fprintln(stdout)
			}
			b.printTable(stdout, rep)
		}
	}
	if jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(stderr, "polymux bench: %v\n", err)
			return 1
		}
	}
	if failed {
		return 1
	}
	return 0
}

// parseBenchFlags turns the bench command's arguments into a bencher, the
// protocols to run and whether to print JSON. On -h it returns a nil
// bencher and exit status 0; on a bad flag, a nil bencher and 2, having
// said why on stderr.
func parseBenchFlags(args []string, stderr io.Writer) (b *bencher, protos []polymux.Protocol, jsonOut bool, code int) {
	fs := flag.NewFlagSet("polymux bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	protoFlag := fs.String("protocol", "yamux", "wire protocol: auto, yamux, smux1, smux2, muxado2, or all (each in turn)")
	streams := fs.Int("streams", 64, "concurrent streams (and raw TCP connections) of the bulk-N workload")
	sizes := sizeList{32 << 10, 1 << 20}
	fs.Var(&sizes, "size", "`bytes` per Write in the bulk workloads, raw TCP's too: comma-separated for several sizes, each with its own rows (k and m: KiB and MiB)")
	duration := fs.Duration("duration", 1500*time.Millisecond, "how long each workload runs")
	fs.BoolVar(&jsonOut, "json", false, "print the results as JSON instead of a table")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: polymux bench [flags]

Runs one polymux session over TCP on 127.0.0.1 in this process and measures
  bulk 1 stream    one stream writing as fast as it can (MB/s, 1 MB = 1e6 bytes)
  bulk N streams   N streams writing concurrently (aggregate MB/s)
                   (both once per -size: by default 32 KiB and 1 MiB writes)
  rpc open+echo    open a stream, send %d bytes, read the echo, close
                   (sequential: op/s and p50/p99 latency)
beside the same workloads on raw TCP (one connection per stream, one dial
per rpc, the same write size), with the ratio polymux / raw TCP, both
measured in this run. A live progress line is drawn on stderr when it is
a terminal.

flags:
`, rpcSize)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, nil, false, 0
		}
		return nil, nil, false, 2
	}
	bad := func(format string, args ...any) (*bencher, []polymux.Protocol, bool, int) {
		fmt.Fprintf(stderr, "polymux bench: "+format+"\n", args...)
		return nil, nil, false, 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "polymux bench: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return nil, nil, false, 2
	}
	if strings.EqualFold(*protoFlag, "all") {
		protos = allProtocols
	} else {
		p, err := polymux.ParseProtocol(*protoFlag)
		if err != nil {
			return bad("-protocol: %v (or all)", err)
		}
		protos = []polymux.Protocol{p}
	}
	switch {
	case *streams < 1:
		return bad("-streams must be at least 1, got %d", *streams)
	case *duration <= 0:
		return bad("-duration must be positive, got %v", *duration)
	}
	b = &bencher{
		streams:  *streams,
		sizes:    sizes,
		duration: *duration,
		drain:    drainTimeout,
		progress: stderr,
		tty:      isTerminal(stderr),
		baseline: make(map[string]workloadResult),
	}
	return b, protos, jsonOut, 0
}

// maxWriteSize bounds a -size: every bulk stream's writer and reader hold
// a buffer of that size.
const maxWriteSize = 64 << 20

// sizeList is the -size flag: write sizes in bytes, comma-separated, each
// a number with an optional k (KiB) or m (MiB) suffix, in order without
// repeats.
type sizeList []int

func (s *sizeList) String() string {
	if s == nil {
		return ""
	}
	f := make([]string, len(*s))
	for i, n := range *s {
		f[i] = strconv.Itoa(n)
	}
	return strings.Join(f, ",")
}

func (s *sizeList) Set(v string) error {
	var out sizeList
	for _, f := range strings.Split(v, ",") {
		n, err := parseSize(strings.TrimSpace(f))
		if err != nil {
			return err
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	*s = out
	return nil
}

// parseSize parses one size of -size: 1000, 32k, 32KiB, 1m, 1MiB.
func parseSize(f string) (int, error) {
	num, mult := strings.ToLower(f), 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"kib", 1 << 10}, {"k", 1 << 10}, {"mib", 1 << 20}, {"m", 1 << 20}} {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSuffix(num, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("bad size %q: want a positive number of bytes, k (KiB) or m (MiB)", f)
	}
	if n > maxWriteSize/mult {
		return 0, fmt.Errorf("size %q is over the limit of %s", f, sizeName(maxWriteSize))
	}
	return n * mult, nil
}

// sizeName formats a write size: 32 KiB, 1 MiB, 1000 B.
func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// sizeNames lists write sizes in words: "32 KiB and 1 MiB".
func sizeNames(sizes []int) string {
	f := make([]string, len(sizes))
	for i, n := range sizes {
		f[i] = sizeName(n)
	}
	if len(f) < 2 {
		return strings.Join(f, "")
	}
	return strings.Join(f[:len(f)-1], ", ") + " and " + f[len(f)-1]
}
