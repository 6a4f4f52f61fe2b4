package layout

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Retirer detaches layouts a while after they leave use: a container being created from
// a spec or an adjustment made just before may still name them. Several processes build
// layouts under one base (the CDI refresher, the NRI plugin, the runtime wrapper), each
// for the capability sets it serves, so a Retirer never detaches a layout of the current
// driver it did not itself see leave use: it retires the layouts it used, and those of
// other driver versions (left by an upgrade, perhaps before a restart). Safe for
// concurrent use.
type Retirer struct {
	base  string
	grace time.Duration
	now   func() time.Time
	// detach takes a layout folder off the host
	detach func(dir string) error

	mu      sync.Mutex
	retired map[string]time.Time
	current map[string]bool
}

// NewRetirer keeps a retired layout under base for grace before detaching it.
func NewRetirer(base string, grace time.Duration) *Retirer {
	return &Retirer{base: base, grace: grace, now: time.Now, detach: detach, retired: map[string]time.Time{}, current: map[string]bool{}}
}

// Use records the layouts in use now, those of driver version, and detaches the layouts
// retired longer than the grace period; it returns their IDs.
func (r *Retirer) Use(version string, plans []Plan) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	current := map[string]bool{}
	for _, p := range plans {
		current[p.ID] = true
		delete(r.retired, p.ID)
	}
	for id := range r.current {
		if !current[id] {
			r.retire(id, now)
		}
	}
	r.current = current
	if entries, err := os.ReadDir(r.base); err == nil && checkBase(r.base) == nil {
		prefix := VersionOf(version) + "-"
		for _, e := range entries {
			if id := e.Name(); e.IsDir() && IsID(id) && !current[id] && !strings.HasPrefix(id, prefix) {
				r.retire(id, now)
			}
		}
	}
	var gone []string
	var errs []error
	unlock := func() {}
	if len(r.retired) > 0 {
		var err error
		if unlock, err = lock(r.base); err != nil {
			return nil, err
		}
	}
	defer unlock()
	for id, since := range r.retired {
		if now.Sub(since) < r.grace {
			continue
		}
		delete(r.retired, id)
		if err := r.detach(filepath.Join(r.base, id)); err != nil {
			errs = append(errs, err)
			continue
		}
		gone = append(gone, id)
	}
	return gone, errors.Join(errs...)
}

func (r *Retirer) retire(id string, now time.Time) {
	if _, ok := r.retired[id]; !ok {
		r.retired[id] = now
	}
}
