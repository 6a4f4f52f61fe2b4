package layout

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nvbind/nvbind/gpu"
)

// Provider keeps the layouts a long-running process's edits name (the NRI plugin's, a
// watched CDI spec's): one per capability set asked for, built where this process may
// mount (root with CAP_SYS_ADMIN), else asked of a builder (nvbind layout build --watch)
// through the want folder. Until a layout is complete, its users mount one file at a time.
type Provider struct {
	// Base is the host folder of the layouts (the same path in the plugin's container).
	Base string
	// Read maps a host path of the driver root to where this process reads it.
	Read func(string) string
	// Build is set when this process builds layouts itself.
	Build bool
	// Prebuilt are the capability sets laid out with every inventory.
	Prebuilt []gpu.Capabilities
	Log      *slog.Logger

	once    sync.Once
	asks    chan gpu.Capabilities
	retirer *Retirer

	mu      sync.Mutex
	inv     *gpu.Inventory
	used    map[gpu.Capabilities]bool // the sets asked for, kept for every inventory
	pending map[gpu.Capabilities]bool // the sets asked of the builder, not complete yet
}

func (l *Provider) init() {
	l.once.Do(func() {
		l.asks = make(chan gpu.Capabilities, 64)
		l.retirer = NewRetirer(l.Base, time.Minute)
		l.used = map[gpu.Capabilities]bool{}
		l.pending = map[gpu.Capabilities]bool{}
		if l.Log == nil {
			l.Log = slog.New(slog.DiscardHandler)
		}
		for _, c := range l.Prebuilt {
			l.used[c] = true
		}
	})
}

// Ready reports whether the layout of caps is complete; if not, it asks for it. The NRI
// plugin calls it from CreateContainer, once per inventory and capability set: a stat.
func (l *Provider) Ready(inv *gpu.Inventory, caps gpu.Capabilities) bool {
	l.init()
	if Complete(l.Base, For(inv, caps)) {
		return true
	}
	select {
	case l.asks <- caps:
	default: // asked already, or too many asks at once: the next container asks again
	}
	return false
}

// Run builds (or asks for) the layouts of every inventory and of the sets users ask for,
// and calls changed when layouts become complete, so that the edits made for the
// inventory are made again. It ends with ctx.
func (l *Provider) Run(ctx context.Context, inventories <-chan *gpu.Inventory, changed func(*gpu.Inventory)) {
	l.init()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case inv := <-inventories:
			l.mu.Lock()
			l.inv = inv
			sets := make([]gpu.Capabilities, 0, len(l.used))
			for c := range l.used {
				sets = append(sets, c)
			}
			l.mu.Unlock()
			if l.provide(inv, false, sets...) {
				changed(inv)
			}
		case caps := <-l.asks:
			l.mu.Lock()
			inv := l.inv
			l.used[caps] = true
			l.mu.Unlock()
			if inv != nil && l.provide(inv, true, caps) {
				changed(inv)
			}
		case <-tick.C:
			// a builder beside us completes what we asked
			l.mu.Lock()
			inv, n := l.inv, len(l.pending)
			l.mu.Unlock()
			if inv != nil && n > 0 && l.settle(inv) {
				changed(inv)
			}
		}
	}
}

// provide builds the layouts of the sets for inv, or asks the builder for them; it
// reports whether any became complete, or, for an ask, is complete (a builder beside us
// may have finished it since the asker looked).
func (l *Provider) provide(inv *gpu.Inventory, ask bool, sets ...gpu.Capabilities) bool {
	made := false
	for _, caps := range sets {
		p := For(inv, caps)
		if len(p.Entries) == 0 {
			continue
		}
		if Complete(l.Base, p) {
			made = made || ask
			continue
		}
		if l.Build {
			b, err := Build(l.Base, p, l.Read)
			if err != nil {
				l.Log.Error("driver layout not built: containers get one mount per file", "layout", p.ID, slog.Any("error", err))
				continue
			}
			if !b.Made {
				made = true // by another builder meanwhile
				continue
			}
			l.Log.Info("driver layout built", "layout", p.ID, "entries", len(p.Entries), slog.Any("whole_folders", b.Whole))
			for _, n := range b.PerFile {
				l.Log.Info("driver folder laid out one file at a time", "layout", p.ID, "folder", n.Folder, "host_folder", n.Host, "reason", n.Why)
			}
			made = true
			continue
		}
		if err := Want(l.Base, caps); err != nil {
			l.Log.Error("driver layout not asked for: containers get one mount per file", "layout", p.ID, slog.Any("error", err))
			continue
		}
		l.mu.Lock()
		l.pending[caps] = true
		l.mu.Unlock()
	}
	if l.Build {
		// every set in use stays, not only those just provided
		l.mu.Lock()
		var plans []Plan
		for caps := range l.used {
			if p := For(inv, caps); len(p.Entries) > 0 {
				plans = append(plans, p)
			}
		}
		l.mu.Unlock()
		gone, err := l.retirer.Use(inv.Driver.Version, plans)
		for _, id := range gone {
			l.Log.Info("driver layout detached", "layout", id)
		}
		if err != nil {
			l.Log.Warn("driver layouts not all detached", slog.Any("error", err))
		}
	}
	return made
}

// settle drops the pending asks the builder has answered and reports whether any was.
func (l *Provider) settle(inv *gpu.Inventory) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	done := false
	for caps := range l.pending {
		if Complete(l.Base, For(inv, caps)) {
			delete(l.pending, caps)
			done = true
		}
	}
	return done
}

// Prepare builds the layouts of the prebuilt sets for inv, when this process builds them;
// Run would, a moment later.
func (l *Provider) Prepare(inv *gpu.Inventory) {
	l.init()
	if !l.Build {
		return
	}
	l.mu.Lock()
	sets := make([]gpu.Capabilities, 0, len(l.used))
	for c := range l.used {
		sets = append(sets, c)
	}
	l.mu.Unlock()
	l.provide(inv, false, sets...)
}

// ReadyAll reports whether every plan's layout is complete, asking for those that are not.
func (l *Provider) ReadyAll(inv *gpu.Inventory, plans []Plan) bool {
	ready := true
	for _, p := range plans {
		if !l.Ready(inv, p.Caps) {
			ready = false
		}
	}
	return ready
}
