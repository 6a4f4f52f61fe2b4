package gpu

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Fingerprint is a digest of everything a container would get from an inventory: two
// inventories with the same fingerprint produce the same specs and adjustments.
func (inv *Inventory) Fingerprint() [32]byte {
	data, err := json.Marshal(inv)
	if err != nil {
		return [32]byte{}
	}
	return sha256.Sum256(data)
}

// Event is one result of a watch: a new inventory, or the error of a discovery.
type Event struct {
	Inventory *Inventory
	Err       error
}

// debounce is how long a watch waits after a file event before discovering again, so a
// package upgrade that writes many files triggers one discovery.
const debounce = 300 * time.Millisecond

// Watch discovers at once, then again every interval and shortly after a change in /dev
// (device nodes appearing) or in the driver's folders (a driver upgrade), and sends an
// event whenever the result changes (driver loaded or upgraded, nodes appearing, MIG
// layout changed) or discovery fails. Failed rounds are retried with backoff from one
// second up to interval, so a driver still loading at boot is picked up as soon as it is
// ready. The channel closes when ctx ends.
func (d *Discoverer) Watch(ctx context.Context, interval time.Duration) <-chan Event {
	ch := make(chan Event, 1)
	go func() {
		defer close(ch)
		fsw, _ := fsnotify.NewWatcher() // without inotify, polling alone still works
		var fsEvents <-chan fsnotify.Event
		var fsErrors <-chan error
		if fsw != nil {
			defer func() { _ = fsw.Close() }()
			fsEvents, fsErrors = fsw.Events, fsw.Errors
			for _, dir := range []string{filepath.Join(d.cfg.devRootMount, "dev"), filepath.Join(d.cfg.devRootMount, "dev/nvidia-caps")} {
				_ = fsw.Add(dir)
			}
		}
		watched := map[string]bool{}
		var last [32]byte
		var lastErr string
		backoff := time.Second
		for {
			inv, err := d.Discover(ctx)
			wait := interval
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				if err.Error() != lastErr {
					lastErr = err.Error()
					if !send(ctx, ch, Event{Inventory: inv, Err: err}) {
						return
					}
				}
				wait = min(backoff, interval)
				backoff = min(backoff*2, interval)
			} else {
				backoff, lastErr = time.Second, ""
				if fp := inv.Fingerprint(); fp != last {
					last = fp
					if !send(ctx, ch, Event{Inventory: inv}) {
						return
					}
				}
				if fsw != nil {
					for _, f := range inv.Files {
						dir := filepath.Dir(d.mountPath(f.HostPath))
						if !watched[dir] && fsw.Add(dir) == nil {
							watched[dir] = true
						}
					}
				}
			}
			if !sleep(ctx, wait, fsEvents, fsErrors) {
				return
			}
		}
	}()
	return ch
}

// sleep waits for d, or for a file event followed by a quiet debounce period. An error
// of the watcher (a queue overflow: events were lost) counts as an event, so discovery
// runs again in full; reading the errors also keeps the watcher from blocking. It
// returns false when ctx ends.
func sleep(ctx context.Context, d time.Duration, events <-chan fsnotify.Event, errs <-chan error) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	soon := func() { // discover again after a quiet debounce period
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(debounce)
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case _, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			soon()
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			soon()
		}
	}
}

// mountPath maps a host path under the driver root to where nvbind reads it.
func (d *Discoverer) mountPath(host string) string {
	rel, err := filepath.Rel(d.cfg.driverRoot, host)
	if err != nil || strings.HasPrefix(rel, "..") {
		return host
	}
	return filepath.Join(d.cfg.driverRootMount, rel)
}

func send(ctx context.Context, ch chan<- Event, e Event) bool {
	select {
	case ch <- e:
		return true
	case <-ctx.Done():
		return false
	}
}
