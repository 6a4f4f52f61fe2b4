package wrapper

import (
	"context"
	"sync"
	"time"

	"github.com/nvbind/nvbind/gpu"
)

// inventoryMaxAge bounds how long the edit service reuses an inventory (gpu.Cache): the
// driver's procfs (version, GPUs, MIG) is read for every container, and file events in
// the driver's folders and /dev end the reuse at once; what neither shows (a file that
// appears where the driver had none, a daemon's socket) is seen within this time.
const inventoryMaxAge = 10 * time.Second

// maxCaches bounds the configurations whose inventories the service keeps.
const maxCaches = 8

// inventoryCaches are the edit service's gpu.Caches, by discovery options.
type inventoryCaches struct {
	mu     sync.Mutex
	caches map[string]*cacheEntry
}

type cacheEntry struct {
	cache *gpu.Cache
	used  time.Time
}

// discover returns the inventory of a discovery with opts, from a cache of those options.
func (c *inventoryCaches) discover(ctx context.Context, opts []gpu.Option) (*gpu.Inventory, error) {
	d, err := gpu.New(opts...)
	if err != nil {
		return nil, err
	}
	key := d.Key()
	c.mu.Lock()
	if c.caches == nil {
		c.caches = map[string]*cacheEntry{}
	}
	e := c.caches[key]
	var evicted *gpu.Cache
	if e == nil {
		if len(c.caches) >= maxCaches {
			oldest := ""
			for k, o := range c.caches {
				if oldest == "" || o.used.Before(c.caches[oldest].used) {
					oldest = k
				}
			}
			evicted = c.caches[oldest].cache
			delete(c.caches, oldest)
		}
		e = &cacheEntry{cache: gpu.NewCache(d, inventoryMaxAge)}
		c.caches[key] = e
	}
	e.used = time.Now()
	c.mu.Unlock()
	if evicted != nil {
		_ = evicted.Close() // waits for a discovery of its own in flight, not under c.mu
	}
	inv, _, err := e.cache.Discover(ctx)
	return inv, err
}

// close releases every cache.
func (c *inventoryCaches) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.caches {
		_ = e.cache.Close()
		delete(c.caches, k)
	}
}
