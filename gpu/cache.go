package gpu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Cache answers discoveries from a Discoverer's last inventory while nothing that
// inventory was made from has changed, for a process asked once per container (the
// runtime wrapper's edit service): a discovery reads hundreds of files, and costs
// milliseconds on every container's creation. The last inventory is reused only when
// all of these hold, else Discover discovers again:
//   - the driver's procfs says the same: its version and parameters, the GPUs it lists,
//     and their MIG instances (proc/driver/nvidia/capabilities), read on every call: a
//     driver loaded, unloaded or upgraded, a GPU gone, a MIG layout changed is seen at
//     the next container;
//   - no file event came from /dev, /dev/nvidia-caps, /dev/dri, the driver root's /etc
//     (ld.so.cache) or a folder holding a file of the inventory (a package upgrade),
//     and the watcher lost none (inotify's events arrive within milliseconds);
//   - it is younger than maxAge: files that appear where the inventory has none (a
//     daemon's socket that starts later) are seen within that time.
//
// Without inotify, or on a driver without procfs (WSL2, Jetson), every call discovers;
// so does a call made while another discovers. The inventory returned is shared:
// callers must not change it.
type Cache struct {
	d      *Discoverer
	maxAge time.Duration

	mu      sync.Mutex
	inv     *Inventory
	stamp   string
	at      time.Time
	watched map[string]bool

	// dirty is set by any file event or watcher error since the inventory was made
	dirty atomic.Bool
	fsw   *fsnotify.Watcher
	done  chan struct{}
}

// NewCache returns a cache of d's discoveries that reuses an inventory for at most
// maxAge. Close releases its watcher.
func NewCache(d *Discoverer, maxAge time.Duration) *Cache {
	c := &Cache{d: d, maxAge: maxAge, watched: map[string]bool{}, done: make(chan struct{})}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		close(c.done)
		return c // no inotify: every call discovers
	}
	c.fsw = fsw
	go func() {
		defer close(c.done)
		for {
			select {
			case _, ok := <-fsw.Events:
				if !ok {
					return
				}
				c.dirty.Store(true)
			case _, ok := <-fsw.Errors:
				if !ok {
					return
				}
				c.dirty.Store(true) // a queue overflow: events were lost
			}
		}
	}()
	return c
}

// Key names the discoveries d makes: two Discoverers of the same key find the same
// inventory.
func (d *Discoverer) Key() string {
	c := d.cfg
	return fmt.Sprintf("%q %q %q %q nvml=%p/%v stater=%p no-nvml=%v no-cuda=%v", c.driverRoot, c.devRoot, c.driverRootMount, c.devRootMount,
		c.nvml, c.nvmlForMIG, c.stater, c.noNVML, c.noCUDA)
}

// Close stops the watcher; Discover then always discovers.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fsw == nil {
		return nil
	}
	err := c.fsw.Close()
	<-c.done
	c.fsw, c.inv = nil, nil
	return err
}

// Discover returns the last inventory where it still holds (see Cache), else discovers.
// reused says which.
func (c *Cache) Discover(ctx context.Context) (inv *Inventory, reused bool, err error) {
	if !c.mu.TryLock() {
		// another call discovers (a slow NVML, a failing driver): this one does not wait
		// for it, as it did not before the cache
		inv, err := c.d.Discover(ctx)
		return inv, false, err
	}
	defer c.mu.Unlock()
	stamp, ok := c.procStamp()
	if c.inv != nil && ok && stamp == c.stamp && !c.dirty.Load() && time.Since(c.at) < c.maxAge {
		return c.inv, true, nil
	}
	c.inv = nil
	// events from here on are the new inventory's to answer; after one, every folder is
	// watched again (one removed and made again is another folder to inotify)
	if c.dirty.Swap(false) {
		c.watched = map[string]bool{}
	}
	at := time.Now()
	inv, err = c.d.Discover(ctx)
	if err != nil || !ok || c.fsw == nil {
		return inv, false, err
	}
	// a folder watched only now may have changed while it was read: the inventory is
	// kept once a discovery ran with every folder of it watched from its start
	keep := true
	required, optional := c.watchList(inv)
	for _, dir := range append(required, optional...) {
		if c.watched[dir] {
			continue
		}
		if err := c.fsw.Add(dir); err != nil {
			if slices.Contains(required, dir) {
				keep = false
			}
			continue // /dev/nvidia-caps, /dev/dri: not on every node (their making is an event in /dev)
		}
		c.watched[dir] = true
		keep = false
	}
	if !keep {
		return inv, false, nil
	}
	c.inv, c.stamp, c.at = inv, stamp, at
	return inv, false, nil
}

// watchList is the folders whose changes make an inventory stale: those that must be
// watched for it to be kept, and those watched where they exist.
func (c *Cache) watchList(inv *Inventory) (required, optional []string) {
	required = []string{filepath.Join(c.d.cfg.devRootMount, "dev")}
	for _, f := range inv.Files {
		if dir := filepath.Dir(c.d.mountPath(f.HostPath)); !slices.Contains(required, dir) {
			required = append(required, dir)
		}
	}
	// the ld cache's folder: a driver root may have none (its libraries are found by path)
	return required, []string{filepath.Join(c.d.cfg.devRootMount, "dev/nvidia-caps"), filepath.Join(c.d.cfg.devRootMount, "dev/dri"),
		filepath.Join(c.d.cfg.driverRootMount, "etc")}
}

// procStamp is what the driver's procfs says that discovery depends on: the version and
// parameters files, the GPUs' folders and their MIG instances' (names and inode numbers,
// to two levels below each GPU's mig folder: an instance destroyed and made again with
// the same ID is a new procfs entry, and has a new UUID). ok is false where there is no
// driver procfs.
func (c *Cache) procStamp() (string, bool) {
	p := procFiles{root: c.d.cfg.devRootMount}
	var b strings.Builder
	version, err := p.read("proc/driver/nvidia/version")
	if err != nil {
		return "", false
	}
	b.Write(version)
	params, _ := p.read("proc/driver/nvidia/params")
	b.WriteString("\x00params\x00")
	b.Write(params)
	var list func(rel string, depth int)
	list = func(rel string, depth int) {
		ents, err := os.ReadDir(filepath.Join(p.root, rel))
		if err != nil {
			return
		}
		for _, e := range ents {
			b.WriteString("\x00" + rel + "/" + e.Name())
			if fi, err := e.Info(); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					b.WriteString("@" + strconv.FormatUint(st.Ino, 10))
				}
			}
			if e.IsDir() && depth > 0 {
				list(rel+"/"+e.Name(), depth-1)
			}
		}
	}
	list("proc/driver/nvidia/gpus", 0)
	// capabilities/gpuN/mig/giX/ciY: the MIG layout
	list("proc/driver/nvidia/capabilities", 4)
	return b.String(), true
}
