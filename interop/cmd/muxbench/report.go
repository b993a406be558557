package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
)

// report is the outcome of a run, as printed (Markdown) or encoded (JSON).
type report struct {
	Machine  machine      `json:"machine"`
	Settings settings     `json:"settings"`
	Notes    []string     `json:"notes"`
	Metrics  []metricInfo `json:"metrics"`
	Rows     []row        `json:"rows"`
}

type machine struct {
	NumCPU     int    `json:"num_cpu"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	CPU        string `json:"cpu"`
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	// LoadAvg is the 1-minute load average before and after the run, from
	// /proc/loadavg: above 0 + a little, something else shared the CPUs.
	LoadAvg [2]string `json:"load_average"`
}

type settings struct {
	Reps              int     `json:"reps"`
	DurationSeconds   float64 `json:"duration_seconds"`
	TimeoutSeconds    float64 `json:"timeout_seconds"`
	StallSeconds      float64 `json:"stall_seconds"`
	IdleStreams       int     `json:"idle_streams"`
	Streams100k       int     `json:"streams100k_streams"`
	Sessions10k       int     `json:"sessions10k_pairs"`
	NoFile            uint64  `json:"rlimit_nofile"`
	SlowReaderBytes   int     `json:"slowreader_bytes"`
	Window            int     `json:"window"`
	StreamLimitRaised int     `json:"stream_limits"`
	// WriteSizes is the bytes per Write of every workload run that has
	// one (the bulk workloads and slowreader), raw TCP's too.
	WriteSizes map[string]int `json:"write_sizes,omitempty"`
}

type metricInfo struct {
	Key          string `json:"key"`
	Header       string `json:"header"`
	Workload     string `json:"workload"`
	HigherBetter bool   `json:"higher_better"`
}

type row struct {
	Library  string          `json:"library"`
	Protocol string          `json:"protocol,omitempty"`
	Polymux  bool            `json:"polymux,omitempty"`
	Peer     bool            `json:"peer,omitempty"`
	Cells    map[string]cell `json:"cells"`
}

// cell is one figure: the median of the successful repetitions, and its
// ratios to raw TCP and to the best reference library in the same column.
type cell struct {
	Median     *float64  `json:"median,omitempty"`
	Reps       []float64 `json:"reps,omitempty"`
	VsTCP      *float64  `json:"vs_tcp,omitempty"`
	VsBestPeer *float64  `json:"vs_best_peer,omitempty"`
	Failures   []string  `json:"failures,omitempty"`
	Notes      []string  `json:"notes,omitempty"`
	digits     int
}

func (b *bench) report(workloads []workload, contenders []contender, res results) report {
	b.loadAfter = loadAvg()
	rep := report{
		Machine: machine{
			NumCPU:     runtime.NumCPU(),
			GOMAXPROCS: runtime.GOMAXPROCS(0),
			CPU:        cpuModel(),
			GoVersion:  runtime.Version(),
			OS:         runtime.GOOS,
			Arch:       runtime.GOARCH,
			LoadAvg:    [2]string{b.loadBefore, b.loadAfter},
		},
		Settings: settings{
			Reps:              b.reps,
			DurationSeconds:   b.duration.Seconds(),
			TimeoutSeconds:    b.timeout.Seconds(),
			StallSeconds:      b.stall.Seconds(),
			IdleStreams:       b.idleStreams,
			Streams100k:       b.streams,
			Sessions10k:       b.sessions,
			NoFile:            nofile(),
			SlowReaderBytes:   b.slowSize,
			Window:            b.opts.Window,
			StreamLimitRaised: b.opts.Streams,
		},
		Notes: b.notes(workloads),
	}
	for _, w := range workloads {
		if w.writeSize > 0 {
			if rep.Settings.WriteSizes == nil {
				rep.Settings.WriteSizes = map[string]int{}
			}
			rep.Settings.WriteSizes[w.name] = w.writeSize
		}
	}
	var metrics []metric
	for _, w := range workloads {
		for _, m := range w.metrics {
			metrics = append(metrics, m)
			rep.Metrics = append(rep.Metrics, metricInfo{m.key, m.header, w.name, m.higherBetter})
		}
	}
	for _, c := range contenders {
		r := row{Library: c.name, Polymux: c.lib != nil && c.lib.Polymux, Peer: c.isPeer(), Cells: map[string]cell{}}
		if c.lib != nil {
			r.Protocol = c.lib.Protocol.String()
		}
		for _, w := range workloads {
			for _, m := range w.metrics {
				var cl cell
				cl.digits = m.digits
				for _, o := range res[w.name][c.name] {
					if o.err != nil {
						cl.Failures = append(cl.Failures, o.err.Error())
					} else if v, ok := o.values[m.key]; ok {
						cl.Reps = append(cl.Reps, v)
					}
					if o.note != "" && len(cl.Notes) == 0 {
						cl.Notes = append(cl.Notes, o.note)
					}
				}
				if len(cl.Reps) > 0 {
					med := median(cl.Reps)
					cl.Median = &med
				}
				r.Cells[m.key] = cl
			}
		}
		rep.Rows = append(rep.Rows, r)
	}
	// Ratios.
	for _, m := range metrics {
		var tcp *float64
		best := math.NaN()
		for _, r := range rep.Rows {
			v := r.Cells[m.key].Median
			if v == nil {
				continue
			}
			if r.Library == rawTCP && !m.noRaw {
				tcp = v
			}
			if r.Peer && (math.IsNaN(best) || (m.higherBetter && *v > best) || (!m.higherBetter && *v < best)) {
				best = *v
			}
		}
		for _, r := range rep.Rows {
			cl := r.Cells[m.key]
			if cl.Median == nil || (m.noRaw && r.Library == rawTCP) {
				continue
			}
			if tcp != nil && *tcp != 0 {
				x := *cl.Median / *tcp
				cl.VsTCP = &x
			}
			if !math.IsNaN(best) && best != 0 {
				x := *cl.Median / best
				cl.VsBestPeer = &x
			}
			r.Cells[m.key] = cl
		}
	}
	return rep
}

func (b *bench) notes(workloads []workload) []string {
	win := "every library gets a 256 KiB per-stream receive window with auto-tuning off"
	if b.opts.Window > 0 && b.opts.Window != muxes256K {
		win = fmt.Sprintf("every library gets a %d-byte per-stream receive window with auto-tuning off", b.opts.Window)
	}
	if b.opts.Window < 0 {
		win = "every library keeps its default windows (polymux and go-yamux auto-tune up to 16 MiB; smux v2 advertises 64 KiB; hashicorp and muxado 256 KiB)"
	}
	n := []string{
		"Both ends of every pairing are the same library, in this one process, over one TCP connection on 127.0.0.1 (raw TCP: one connection per stream, one dial per rpc, closed with SO_LINGER 0).",
		"Config changed from the libraries' defaults, to compare like with like: " + win +
			" (polymux InitialStreamWindow = MaxStreamWindow; go-yamux InitialStreamWindowSize = MaxStreamWindowSize; hashicorp MaxStreamWindowSize; smux MaxStreamBuffer; muxado MaxWindowSize)" +
			fmt.Sprintf("; the limits that refuse an open raised to %d streams so the idle workload fits: polymux and go-yamux MaxIncomingStreams, and muxado AcceptBacklog (muxado refuses an open that finds its accept queue full, since its opener does not wait). Every other accept backlog keeps its default, and none loses a stream: polymux 256 (a yamux opener waits for ACKs, an smux session stops reading while it is full, muxado streams simply wait), hashicorp and go-yamux 256 (their openers wait for ACKs), smux 1024 (fixed; its reader stops while it is full)", b.opts.Streams) +
			"; received-but-unread bytes per session bounded at 64 MiB (polymux MaxSessionBuffer, its default; smux MaxReceiveBuffer, default 4 MiB); smux MaxFrameSize 65535 (default 32768; polymux sends 64 KiB frames); logging off. Everything else is each library's default (keepalives on).",
		"MB/s counts 1e6 bytes per second. bulk1, bulk16 and bulk256 write 32 KiB writes, bulk1_1m and bulk16_1m 1 MiB writes (1MiB in the header), raw TCP the same size as every multiplexer, each reader's buffer the size of a write and at least 64 KiB (before the 1 MiB workloads were added, bulk1, bulk16 and bulk256 wrote 64 KiB writes); slowreader writes 64 KiB writes. allocs/MiB is runtime.MemStats.Mallocs during bulk1 over MiB moved, both ends; 1MiB allocs/MiB the same during bulk1_1m. idle B/stream is heap growth over the streams held, both ends; idle goroutines/stream likewise. Memory is sampled as MemStats.HeapAlloc (and StackInuse) after two GCs, once runtime.NumGoroutine has held still for 50 ms (at most 3 s: engines whose writer goroutine exits when idle get to go idle); the samples bracket the streams or pairs only (the slices holding them are made before the first).",
		"Each cell is the median of the repetitions; (a, b) after a figure are its ratio to raw TCP and to the best reference library in that column (higher is better for MB/s and op/s, lower for the rest). FAIL: the cell failed in every repetition (stalled, timed out or erred); * a figure from fewer repetitions than were run.",
	}
	selected := func(name string) bool {
		return slices.ContainsFunc(workloads, func(w workload) bool { return w.name == name })
	}
	if selected("streams100k") {
		n = append(n, fmt.Sprintf("streams100k: %d streams opened one after another on one session, one byte written on each and read by the acceptor, then held; the limits that refuse an open raised to %d for it (polymux and go-yamux MaxIncomingStreams, muxado AcceptBacklog; hashicorp/yamux and xtaci/smux have none), every accept backlog at its default. opens/s: streams over the time from the first open to the last stream accepted and its byte read. Raw TCP holds at most %d connections (one per stream; 100,000 would need more ephemeral ports than 127.0.0.1 has).", b.streams, max(b.opts.Streams, b.streams+1024), min(rawStreamsCap, b.rawIdleLimit)))
	}
	if selected("sessions10k") {
		n = append(n, fmt.Sprintf("sessions10k: %d session pairs (fewer where the file descriptor limit says so, noted below) set up one after another and then all held: a dial to one listener, the server's and the client's session on the connection, one stream opened, one byte written each way. Window settings as above; stream limits and accept backlogs at the libraries' defaults (one stream per session). heap, stack (goroutine stacks, MemStats.StackInuse) and goroutines per pair are growth over the pairs held, both ends; pairs/s is pairs over the time from the first dial to the last pair's second byte. Raw TCP: a connection pair with one byte each way. Connections are closed with SO_LINGER 0 at the end.", b.sessions))
	}
	if b.nofile != "" {
		n = append(n, b.nofile+".")
	}
	return n
}

// nofile is RLIMIT_NOFILE's soft limit, 0 if unknown.
func nofile() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return rl.Cur
}

const muxes256K = 256 << 10

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// format prints v with the given decimals, more when v is small (two
// significant digits at least), none from 1000 up.
func format(v float64, digits int) string {
	a := math.Abs(v)
	switch {
	case a >= 1000 || (digits == 0 && a >= 10):
		return fmt.Sprintf("%.0f", v)
	case a == 0:
		return "0"
	case a < 1:
		digits = max(digits, 1-int(math.Floor(math.Log10(a))))
	case digits == 0:
		digits = 1
	}
	return fmt.Sprintf("%.*f", digits, v)
}

func ratio(p *float64) string {
	if p == nil {
		return "–"
	}
	return fmt.Sprintf("%.2f", *p)
}

func (c cell) String() string {
	if c.Median == nil {
		if len(c.Failures) > 0 {
			return "FAIL"
		}
		return ""
	}
	s := format(*c.Median, c.digits)
	if len(c.Failures) > 0 {
		s += "*"
	}
	return fmt.Sprintf("%s (%s, %s)", s, ratio(c.VsTCP), ratio(c.VsBestPeer))
}

func writeMarkdown(w io.Writer, rep report) {
	m := rep.Machine
	fmt.Fprintf(w, "Machine: %d CPUs (GOMAXPROCS %d), %s, %s %s/%s; 1-minute load average %s before the run, %s after. %d repetitions; timed workloads run %gs per cell.\n\n",
		m.NumCPU, m.GOMAXPROCS, m.CPU, m.GoVersion, m.OS, m.Arch, m.LoadAvg[0], m.LoadAvg[1], rep.Settings.Reps, rep.Settings.DurationSeconds)
	fmt.Fprint(w, "| library |")
	for _, mi := range rep.Metrics {
		fmt.Fprintf(w, " %s |", mi.Header)
	}
	fmt.Fprint(w, "\n|---|")
	for range rep.Metrics {
		fmt.Fprint(w, "---:|")
	}
	fmt.Fprintln(w)
	for _, r := range rep.Rows {
		name := r.Library
		if r.Polymux {
			name = "**" + name + "**"
		}
		fmt.Fprintf(w, "| %s |", name)
		for _, mi := range rep.Metrics {
			fmt.Fprintf(w, " %s |", r.Cells[mi.Key])
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
	// Failures and notes, once per workload and library.
	seen := map[string]bool{}
	for _, r := range rep.Rows {
		for _, mi := range rep.Metrics {
			c := r.Cells[mi.Key]
			key := r.Library + "/" + mi.Workload
			if seen[key] || (len(c.Failures) == 0 && len(c.Notes) == 0) {
				continue
			}
			seen[key] = true
			var parts []string
			if len(c.Failures) > 0 {
				parts = append(parts, fmt.Sprintf("failed %d of %d: %s", len(c.Failures), rep.Settings.Reps, c.Failures[0]))
			}
			parts = append(parts, c.Notes...)
			fmt.Fprintf(w, "- %s, %s: %s\n", r.Library, mi.Workload, strings.Join(parts, "; "))
		}
	}
}

// loadAvg is the 1-minute load average from /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "unknown"
	}
	return f[0]
}

func writeJSON(w io.Writer, rep report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}
