package health

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/test/driverroot"
)

func keys(m map[string]Fault) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestTrackerPolicy: application-caused XIDs (NVIDIA's list and the operator's) leave a
// GPU in service and are still counted; a critical one takes it out; it returns only after
// the recovery time without another and while the driver answers; "GPU lost" without a
// GPU takes out every GPU; a GPU discovery no longer finds forgets its fault.
func TestTrackerPolicy(t *testing.T) {
	t.Parallel()
	extra, err := ParseXIDs("48, 94")
	if err != nil || !slices.Equal(extra, []uint64{48, 94}) {
		t.Fatalf("ParseXIDs = %v, %v", extra, err)
	}
	for _, bad := range []string{"x", "0", "-1", "13,,y"} {
		if _, err := ParseXIDs(bad); err == nil || !strings.Contains(err.Error(), "valid:") {
			t.Errorf("ParseXIDs(%q) = %v", bad, err)
		}
	}
	m := NewMetrics()
	tr := NewTracker(Policy{Ignored: append(slices.Clone(DefaultIgnoredXIDs), extra...), RecoverAfter: time.Minute}, m)
	tr.SetGPUs([]string{"GPU-a", "GPU-b", "GPU-c"})
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for _, x := range []uint64{13, 31, 43, 45, 68, 109, 48, 94} {
		if out, critical := tr.Observe(Event{GPU: "GPU-a", XID: x}, t0); out || critical {
			t.Errorf("XID %d took the GPU out of service", x)
		}
	}
	if len(tr.Faults()) != 0 {
		t.Fatalf("faults after ignored XIDs: %v", tr.Faults())
	}
	if v := testutil.ToFloat64(m.xids.WithLabelValues("GPU-a", "13")); v != 1 {
		t.Errorf("xid counter for 13 = %v, want 1", v)
	}
	if out, _ := tr.Observe(Event{GPU: "GPU-b", XID: 79}, t0); !out {
		t.Fatal("XID 79 left the GPU in service")
	}
	select {
	case <-tr.Changed():
	default:
		t.Error("no change signalled")
	}
	for _, x := range []uint64{48, 63} {
		if out, critical := tr.Observe(Event{GPU: "GPU-b", XID: x}, t0.Add(30*time.Second)); out || critical != (x == 63) {
			t.Errorf("XID %d on a GPU already out: out %v, critical %v", x, out, critical)
		}
	}
	if out, critical := tr.Observe(Event{GPU: "GPU-other", XID: 79}, t0); out || critical {
		t.Error("an event of a GPU not on this node counted")
	}
	// GPU-a's eight ignored XIDs and GPU-b's 79, 48 and 63; nothing for GPU-other
	if n := testutil.CollectAndCount(m.xids); n != 11 {
		t.Errorf("nvbind_gpu_xid_errors_total has %d series, want 11", n)
	}
	f := tr.Faults()["GPU-b"]
	if f.Count != 2 || f.Event.XID != 63 || !f.Since.Equal(t0) || !strings.Contains(f.Reason(), "XID 63 at 2026-12-01T12:00:30Z (2 critical events since 2026-12-01T12:00:00Z)") {
		t.Errorf("fault = %+v, %s", f, f.Reason())
	}
	if v := testutil.ToFloat64(m.health.WithLabelValues("GPU-b")); v != 0 {
		t.Errorf("nvbind_gpu_health of GPU-b = %v, want 0", v)
	}
	if v := testutil.ToFloat64(m.health.WithLabelValues("GPU-a")); v != 1 {
		t.Errorf("nvbind_gpu_health of GPU-a = %v, want 1", v)
	}
	answers := true
	ask := func(string) bool { return answers }
	// the last critical event was at t0+30s: not yet
	if back := tr.Recover(t0.Add(80*time.Second), ask); len(back) != 0 {
		t.Errorf("recovered %v before the recovery time", back)
	}
	answers = false
	if back := tr.Recover(t0.Add(2*time.Minute), ask); len(back) != 0 {
		t.Errorf("recovered %v while the driver does not answer", back)
	}
	answers = true
	if back := tr.Recover(t0.Add(2*time.Minute), ask); !slices.Equal(back, []string{"GPU-b"}) {
		t.Errorf("recovered %v, want GPU-b", back)
	}
	if v := testutil.ToFloat64(m.health.WithLabelValues("GPU-b")); v != 1 {
		t.Errorf("nvbind_gpu_health of GPU-b after recovery = %v", v)
	}

	// lost, no GPU named: all of them
	if out, _ := tr.Observe(Event{Lost: true}, t0); !out || !slices.Equal(keys(tr.Faults()), []string{"GPU-a", "GPU-b", "GPU-c"}) {
		t.Errorf("GPU lost: faults %v", keys(tr.Faults()))
	}
	// a GPU that left keeps its fault (back, it returns by the policy only), not its series
	tr.SetGPUs([]string{"GPU-a", "GPU-b"})
	if !slices.Equal(keys(tr.Faults()), []string{"GPU-a", "GPU-b", "GPU-c"}) {
		t.Errorf("a GPU that left lost its fault: %v", keys(tr.Faults()))
	}
	if n := testutil.CollectAndCount(m.health); n != 2 {
		t.Errorf("nvbind_gpu_health has %d series, want 2", n)
	}
	if back := tr.Recover(t0.Add(2*time.Minute), func(g string) bool { return g != "GPU-c" }); !slices.Equal(back, []string{"GPU-a", "GPU-b"}) {
		t.Errorf("recovered %v, want GPU-a and GPU-b (GPU-c does not answer)", back)
	}
	tr.SetGPUs([]string{"GPU-a", "GPU-b", "GPU-c"})
	if !slices.Equal(keys(tr.Faults()), []string{"GPU-c"}) {
		t.Errorf("GPU-c back: faults %v, want it still out", keys(tr.Faults()))
	}

	// an event while the driver is asked keeps the GPU out
	again := NewTracker(Policy{RecoverAfter: time.Minute}, nil)
	again.SetGPUs([]string{"GPU-a"})
	_, _ = again.Observe(Event{GPU: "GPU-a", XID: 79}, t0)
	if back := again.Recover(t0.Add(2*time.Minute), func(g string) bool {
		_, _ = again.Observe(Event{GPU: g, XID: 79}, t0.Add(2*time.Minute))
		return true
	}); len(back) != 0 || len(again.Faults()) != 1 {
		t.Errorf("a GPU with an XID during the check returned: %v", back)
	}

	never := NewTracker(Policy{}, nil)
	never.SetGPUs([]string{"GPU-a"})
	_, _ = never.Observe(Event{GPU: "GPU-a", XID: 79}, t0)
	if back := never.Recover(t0.Add(24*time.Hour), ask); len(back) != 0 || len(never.Faults()) != 1 {
		t.Errorf("with no recovery time a GPU returned: %v", back)
	}
}

// events is a mock NVML event set fed by a channel.
type events struct {
	mu     sync.Mutex
	ch     chan nvml.EventData
	lost   chan struct{}
	freed  bool
	waited int
}

func (e *events) set() *mock.EventSet {
	return &mock.EventSet{
		WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) {
			e.mu.Lock()
			e.waited++
			e.mu.Unlock()
			select {
			case d := <-e.ch:
				return d, nvml.SUCCESS
			case <-e.lost:
				return nvml.EventData{}, nvml.ERROR_GPU_IS_LOST
			case <-time.After(time.Duration(ms) * time.Millisecond):
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
		},
		FreeFunc: func() nvml.Return {
			e.mu.Lock()
			e.freed = true
			e.mu.Unlock()
			return nvml.SUCCESS
		},
	}
}

// eventServer is go-nvml's DGX A100 mock whose GPUs report XID events through ev; GPU 7
// does not support them.
func eventServer(ev *events) (*server.Server, map[string]bool) {
	s := dgxa100.New()
	registered := map[string]bool{}
	var mu sync.Mutex
	s.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return ev.set(), nvml.SUCCESS }
	for i, d := range s.Devices {
		dev := d.(*server.Device)
		dev.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
			if i == 7 {
				return nvml.EventTypeSingleBitEccError, nvml.SUCCESS
			}
			return nvml.EventTypeXidCriticalError | nvml.EventTypeSingleBitEccError, nvml.SUCCESS
		}
		dev.RegisterEventsFunc = func(types uint64, _ nvml.EventSet) nvml.Return {
			mu.Lock()
			defer mu.Unlock()
			if types != nvml.EventTypeXidCriticalError {
				return nvml.ERROR_INVALID_ARGUMENT
			}
			registered[dev.UUID] = true
			return nvml.SUCCESS
		}
	}
	return s, registered
}

// TestNVMLSource: with go-nvml's DGX A100 mock, every GPU that reports XID events is
// registered, an XID event comes out with its GPU's UUID, other event types are dropped,
// "GPU is lost" comes out for all GPUs, and the event set is freed when ctx ends.
func TestNVMLSource(t *testing.T) {
	t.Parallel()
	ev := &events{ch: make(chan nvml.EventData), lost: make(chan struct{})}
	s, registered := eventServer(ev)
	var uuids []string
	for _, d := range s.Devices {
		uuids = append(uuids, d.(*server.Device).UUID)
	}
	got := make(chan Event, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- NVMLSource{Lib: s, GPUs: uuids, Wait: 20 * time.Millisecond}.Run(ctx, func(e Event) { got <- e })
	}()
	ev.ch <- nvml.EventData{Device: s.Devices[2], EventType: nvml.EventTypeSingleBitEccError, EventData: 1}
	ev.ch <- nvml.EventData{Device: s.Devices[3], EventType: nvml.EventTypeXidCriticalError, EventData: 79}
	if e := <-got; e.GPU != uuids[3] || e.XID != 79 || e.Lost {
		t.Errorf("event = %+v, want XID 79 of %s", e, uuids[3])
	}
	ev.lost <- struct{}{}
	if e := <-got; !e.Lost || e.GPU != "" {
		t.Errorf("event = %+v, want GPU lost for all", e)
	}
	// lost for good: NVML answers so at once on every wait, and the source waits its
	// wait time between them instead of spinning
	close(ev.lost)
	n := 0
	for deadline := time.After(200 * time.Millisecond); n >= 0; {
		select {
		case <-got:
			n++
		case <-deadline:
			if n > 12 || n < 1 {
				t.Errorf("%d lost events in 200 ms with a 20 ms wait, want 1 to 12", n)
			}
			n = -1
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(registered) != 7 || registered[uuids[7]] {
		t.Errorf("registered %d GPUs (GPU 7: %v), want the 7 that report XIDs", len(registered), registered[uuids[7]])
	}
	if !ev.freed {
		t.Error("event set not freed")
	}
	// NVML without events for any GPU: an error, which the monitor logs
	none := dgxa100.New()
	none.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return (&events{}).set(), nvml.SUCCESS }
	for _, d := range none.Devices {
		d.(*server.Device).GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	}
	if err := (NVMLSource{Lib: none, GPUs: uuids[:1]}).Run(context.Background(), func(Event) {}); err == nil || !strings.Contains(err.Error(), "none of the GPUs") {
		t.Errorf("no events supported: %v", err)
	}
}

// TestFileSource: lines appended after the start come out (by UUID or index); what was
// there before is not replayed; bad, unknown and overlong lines are skipped, a long line
// also when it comes in pieces; a file truncated, or replaced by another, is read again
// from its start.
func TestFileSource(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "xid")
	if err := os.WriteFile(p, []byte("GPU-old 79\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := make(chan Event, 64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := FileSource{Path: p, Poll: 5 * time.Millisecond, Resolve: func(i int) (string, bool) {
		if i == 1 {
			return "GPU-one", true
		}
		return "", false
	}}
	go func() { _ = src.Run(ctx, func(e Event) { got <- e }) }()
	appendTo := func(s string) { t.Helper(); appendFile(t, p, s) }
	next := func() Event {
		t.Helper()
		for {
			select {
			case e := <-got:
				if e.GPU != "GPU-mark" { // the start markers may still come
					return e
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no event")
				return Event{}
			}
		}
	}
	// the source takes the file's size when it starts: a marker line, appended until it
	// comes out, says it has
	for started := false; !started; {
		appendTo("GPU-mark 1\n")
		select {
		case e := <-got:
			started = e.GPU == "GPU-mark"
		case <-time.After(20 * time.Millisecond):
		}
	}
	for len(got) > 0 {
		if e := <-got; e.GPU != "GPU-mark" {
			t.Fatalf("replayed or unexpected: %+v", e)
		}
	}
	appendTo("GPU-x 79\nnot an event\n7 79\n" + strings.Repeat("y", 1000) + "\n1 48\nGPU-x lo")
	time.Sleep(20 * time.Millisecond) // a poll between the halves of a line
	appendTo("st\n" + strings.Repeat("z", 200))
	time.Sleep(20 * time.Millisecond)
	appendTo(strings.Repeat("z", 200) + " 79\nGPU-y 94\n")
	for _, w := range []Event{{GPU: "GPU-x", XID: 79}, {GPU: "GPU-one", XID: 48}, {GPU: "GPU-x", Lost: true}, {GPU: "GPU-y", XID: 94}} {
		if e := next(); e != w {
			t.Errorf("event %+v, want %+v", e, w)
		}
	}
	if err := os.WriteFile(p, []byte("GPU-z 94\n"), 0o644); err != nil { // shorter: read from the start
		t.Fatal(err)
	}
	if e := next(); e != (Event{GPU: "GPU-z", XID: 94}) {
		t.Errorf("after truncation: %+v", e)
	}
	// rotated: another file, as long as the old one was
	rotated := filepath.Join(dir, "xid.new")
	if err := os.WriteFile(rotated, []byte("GPU-r 79\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(rotated, p); err != nil {
		t.Fatal(err)
	}
	if e := next(); e != (Event{GPU: "GPU-r", XID: 79}) {
		t.Errorf("after rotation: %+v", e)
	}
}

// TestFileSourceStartsMidLine: a line the writer was in the middle of when the reader
// started is not read as a line of its own (its rest would name another GPU); a file
// removed and written again, whatever inode it gets, is read from its start.
func TestFileSourceStartsMidLine(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "xid")
	if err := os.WriteFile(p, []byte("GPU-old 79\n1"), 0o644); err != nil { // "12 79" being written
		t.Fatal(err)
	}
	r := eventReader{path: p}
	defer r.close()
	if err := r.open(true); err != nil {
		t.Fatal(err)
	}
	appendTo := func(s string) { t.Helper(); appendFile(t, p, s) }
	lines := func() []string {
		t.Helper()
		data, err := r.read()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		r.lines(data, func(line string, err error) {
			if err != nil {
				line = "error: " + err.Error()
			}
			out = append(out, line)
		})
		return out
	}
	appendTo("2 79\nGPU-x 79\n")
	if got := lines(); !slices.Equal(got, []string{"GPU-x 79"}) {
		t.Errorf("lines %q, want the rest of the first skipped", got)
	}
	appendTo(strings.Repeat("z", 300) + "\nGPU-z 1\n")
	if got := lines(); !slices.Equal(got, []string{"error: longer than 256 bytes", "GPU-z 1"}) {
		t.Errorf("lines %q", got)
	}
	// removed and written again, longer than the offset: from its start (the reader holds
	// the old file open, so the new one cannot have its inode)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(strings.Repeat("GPU-y 94\n", 80)), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := lines(); len(got) != 80 || got[0] != "GPU-y 94" {
		t.Errorf("after the file was written again: %d lines, first %q", len(got), got[0])
	}
}

// appendFile appends s to the file at p, as a monitor writing events does.
func appendFile(t *testing.T, p, s string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
}

// TestFileSourceFIFO: a FIFO where the event file should be is never opened for a
// blocking read: nothing comes out, and the source reads the regular file that follows.
func TestFileSourceFIFO(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "xid")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	got := make(chan Event, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	polled := make(chan struct{}, 64)
	go func() {
		_ = FileSource{Path: p, Poll: 5 * time.Millisecond, Log: slog.New(slog.NewTextHandler(signal{polled}, nil))}.Run(ctx, func(e Event) { got <- e })
	}()
	select {
	case <-polled: // it logged the FIFO, so it did not block on it
	case <-time.After(10 * time.Second):
		t.Fatal("the source blocked on a FIFO")
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("GPU-after 79\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-got:
		if e != (Event{GPU: "GPU-after", XID: 79}) {
			t.Errorf("after the FIFO: %+v", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event after the FIFO")
	}
}

// signal is a log writer that signals each write.
type signal struct{ ch chan struct{} }

func (s signal) Write(b []byte) (int, error) {
	select {
	case s.ch <- struct{}{}:
	default:
	}
	return len(b), nil
}

// FuzzEventLine: the event file's parser takes any line without panic, and what it
// accepts is a GPU UUID or a known index with a positive XID or "lost".
func FuzzEventLine(f *testing.F) {
	for _, s := range []string{"GPU-x 79", "1 48", "GPU-x lost", "", "GPU- 0", "9999999999999999999 1"} {
		f.Add(s)
	}
	src := FileSource{Resolve: func(i int) (string, bool) { return "GPU-one", i == 1 }}
	f.Fuzz(func(t *testing.T, line string) {
		e, err := src.parse(line)
		if err != nil {
			return
		}
		if !strings.HasPrefix(e.GPU, "GPU-") || (e.XID == 0) != e.Lost {
			t.Fatalf("%q parsed as %+v", line, e)
		}
	})
}

// anyNode answers for every device node: the mock's eight GPUs on a root made for two.
type anyNode struct{}

func (anyNode) Stat(p string) (gpu.DeviceNode, error) {
	return gpu.DeviceNode{Path: p, HostPath: p, Major: 195, FileMode: os.ModeCharDevice | 0o666}, nil
}

// TestMonitorFollowsDiscovery: discovery with go-nvml's DGX A100 mock hands the monitor
// its NVML; an XID event there takes the GPU out of service (OnChange), and the policy
// brings it back once the recovery time passes and NVML answers for it.
func TestMonitorFollowsDiscovery(t *testing.T) {
	t.Parallel()
	ev := &events{ch: make(chan nvml.EventData), lost: make(chan struct{})}
	s, _ := eventServer(ev)
	root := driverroot.Open(t, "debian-535")
	d, err := gpu.New(gpu.WithDriverRoot(root.Path), gpu.WithDevRoot(root.Path), gpu.WithNVML(s), gpu.WithDeviceStater(anyNode{}))
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if inv.NVML() == nil || len(inv.Devices) != 8 {
		t.Fatalf("inventory from NVML: source %s, %d GPUs", inv.Source, len(inv.Devices))
	}
	changes := make(chan map[string]Fault, 8)
	mon := &Monitor{Tracker: NewTracker(Policy{Ignored: DefaultIgnoredXIDs, RecoverAfter: 200 * time.Millisecond}, nil),
		Every: 20 * time.Millisecond, OnChange: func(f map[string]Fault) { changes <- f }}
	mon.Update(inv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go mon.Run(ctx)
	ev.ch <- nvml.EventData{Device: s.Devices[5], EventType: nvml.EventTypeXidCriticalError, EventData: 13}
	ev.ch <- nvml.EventData{Device: s.Devices[5], EventType: nvml.EventTypeXidCriticalError, EventData: 48}
	next := func() map[string]Fault {
		t.Helper()
		select {
		case f := <-changes:
			return f
		case <-time.After(10 * time.Second):
			t.Fatal("no change")
		}
		return nil
	}
	if f := next(); len(f) != 1 || f[inv.Devices[5].UUID].Event.XID != 48 {
		t.Fatalf("faults %v, want GPU 5 out for XID 48", f)
	}
	if f := next(); len(f) != 0 {
		t.Fatalf("faults %v, want none after the recovery time", f)
	}
}
