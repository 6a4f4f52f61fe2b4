package gpu

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"time"
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

// Watch discovers at once and then every interval, and sends an event whenever the
// result changes (driver loaded or upgraded, device nodes appearing, MIG layout changed)
// or discovery fails. Failed rounds are retried with backoff, starting at one second, so
// a driver still loading at boot is picked up as soon as it is ready. The channel closes
// when ctx ends.
func (d *Discoverer) Watch(ctx context.Context, interval time.Duration) <-chan Event {
	ch := make(chan Event, 1)
	go func() {
		defer close(ch)
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
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}()
	return ch
}

func send(ctx context.Context, ch chan<- Event, e Event) bool {
	select {
	case ch <- e:
		return true
	case <-ctx.Done():
		return false
	}
}
