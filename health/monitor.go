package health

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/nvbind/nvbind/gpu"
)

// Monitor feeds a Tracker from NVML's XID events (while discovery uses NVML) and from an
// event file, follows the inventory, and returns GPUs to service by the policy.
type Monitor struct {
	Tracker *Tracker
	Log     *slog.Logger
	// NVML is the library to wait on for events, the inventory's (Update); nil without.
	NVML nvml.Interface
	// asked is the NVML that recovery asks: the last one an inventory had, so that a GPU
	// NVML lost (discovery then falls back to procfs, which still lists it) is asked NVML.
	asked nvml.Interface
	// File is an event file (FileSource); empty for none.
	File string
	// OnChange gets the GPUs out of service after each change (the device plugin's
	// SetFaults).
	OnChange func(map[string]Fault)
	// Every is how often recovery is checked (default 1 s).
	Every time.Duration
	now   func() time.Time

	mu      sync.Mutex
	ctx     context.Context
	gpus    []string
	byIndex map[int]string
	stop    context.CancelFunc // the NVML source's
}

// Run serves until ctx ends; Update may be called before and while it runs.
func (m *Monitor) Run(ctx context.Context) {
	m.mu.Lock() // Update may run meanwhile
	if m.Log == nil {
		m.Log = slog.New(slog.DiscardHandler)
	}
	if m.now == nil {
		m.now = time.Now
	}
	m.ctx = ctx
	m.restartLocked()
	m.mu.Unlock()
	if m.OnChange != nil {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-m.Tracker.Changed():
					m.OnChange(m.Tracker.Faults())
				}
			}
		}()
	}
	if m.File != "" {
		go func() {
			_ = FileSource{Path: m.File, Resolve: m.resolve, Log: m.Log}.Run(ctx, m.observe)
		}()
	}
	every := m.Every
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, g := range m.Tracker.Recover(m.now(), m.answers) {
			m.Log.Info("GPU back in service: no critical XID for the recovery time, and the driver answers for it", "uuid", g)
		}
	}
}

func (m *Monitor) observe(e Event) {
	switch out, critical := m.Tracker.Observe(e, m.now()); {
	case out:
		m.Log.Warn("GPU out of service: the driver reported a critical fault", "uuid", e.GPU, "event", e.String())
	case critical && e.Lost:
		m.Log.Debug("GPU still lost", "uuid", e.GPU) // NVML says so on every wait
	case critical:
		m.Log.Warn("GPU still out of service: another critical fault", "uuid", e.GPU, "event", e.String())
	default:
		m.Log.Info("XID event that leaves the GPU in service (an application's fault, or not this node's GPU)", "uuid", e.GPU, "event", e.String())
	}
}

// answers says whether the driver still answers for a GPU: NVML's handle and PCI
// information, or, without NVML, discovery still finding it.
func (m *Monitor) answers(uuid string) bool {
	m.mu.Lock()
	lib, found := m.asked, slices.Contains(m.gpus, uuid)
	m.mu.Unlock()
	if lib != nil {
		return NVMLAnswers(lib)(uuid)
	}
	return found
}

func (m *Monitor) resolve(i int) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u, ok := m.byIndex[i]
	return u, ok
}

// Update takes a new inventory: its GPUs are the ones tracked, and NVML's event set is
// made again when they or the NVML that lists them changed.
func (m *Monitor) Update(inv *gpu.Inventory) {
	lib := inv.NVML()
	var uuids []string
	byIndex := map[int]string{}
	for _, d := range inv.Devices {
		uuids = append(uuids, d.UUID)
		byIndex[d.Index] = d.UUID
	}
	slices.Sort(uuids)
	m.Tracker.SetGPUs(uuids)
	m.mu.Lock()
	defer m.mu.Unlock()
	same := slices.Equal(uuids, m.gpus) && lib == m.NVML
	m.gpus, m.byIndex, m.NVML = uuids, byIndex, lib
	if lib != nil {
		m.asked = lib
	}
	if !same {
		m.restartLocked()
	}
}

func (m *Monitor) restartLocked() {
	if m.stop != nil {
		m.stop()
		m.stop = nil
	}
	if m.NVML == nil || m.ctx == nil || len(m.gpus) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(m.ctx)
	m.stop = cancel
	src := NVMLSource{Lib: m.NVML, GPUs: slices.Clone(m.gpus), Log: m.Log}
	go func() {
		// NVML may fail to start for a while (a driver being loaded): try again, less
		// and less often, until it serves or this source is replaced
		for wait := time.Second; ctx.Err() == nil; wait = min(2*wait, 5*time.Minute) {
			err := src.Run(ctx, m.observe)
			if err == nil {
				return
			}
			m.Log.Warn("no XID events from NVML, trying again: meanwhile GPUs leave service only when discovery loses them", "retry_in", wait, slog.Any("error", err))
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
	}()
}
