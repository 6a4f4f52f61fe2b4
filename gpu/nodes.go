package gpu

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// statDevice reads real device numbers with lstat(2).
type statDevice struct{}

func (statDevice) Stat(path string) (DeviceNode, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return DeviceNode{}, &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return DeviceNode{}, fmt.Errorf("%s is not a character device", path)
	}
	return DeviceNode{
		HostPath: path,
		Major:    int64(unix.Major(st.Rdev)),
		Minor:    int64(unix.Minor(st.Rdev)),
		FileMode: fs.FileMode(st.Mode & 0o7777),
		UID:      st.Uid,
		GID:      st.Gid,
	}, nil
}

// node stats /dev/<rel> under the dev root. A missing node is (zero, false, nil).
func (d *Discoverer) node(rel string) (DeviceNode, bool, error) {
	n, err := d.cfg.stater.Stat(filepath.Join(d.cfg.devRootMount, "dev", rel))
	if errors.Is(err, fs.ErrNotExist) {
		return DeviceNode{}, false, nil
	}
	if err != nil {
		return DeviceNode{}, false, err
	}
	n.Path = "/dev/" + rel
	n.HostPath = filepath.Join(d.cfg.devRoot, "dev", rel)
	return n, true, nil
}

// discoverNodes fills the device nodes of the inventory: control nodes, each GPU's node and
// DRM nodes, MIG capability nodes and IMEX channels. Dynamic majors are checked against
// /proc/devices.
func (d *Discoverer) discoverNodes(inv *Inventory, proc procFiles) error {
	majors, err := proc.devices()
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	check := func(n DeviceNode, name string) {
		if m, ok := majors[name]; ok && m != n.Major {
			inv.Warnings = append(inv.Warnings, Warning{WarnStaleNode, fmt.Sprintf("%s has major %d but /proc/devices lists %s as %d: stale device node",
				n.HostPath, n.Major, name, m)})
		}
	}
	for _, c := range []struct{ rel, major string }{
		{"nvidiactl", "nvidia-frontend"}, {"nvidia-uvm", "nvidia-uvm"}, {"nvidia-uvm-tools", "nvidia-uvm"}, {"nvidia-modeset", "nvidia-frontend"},
	} {
		n, ok, err := d.node(c.rel)
		if err != nil {
			return err
		}
		if ok {
			check(n, c.major)
			inv.ControlNodes = append(inv.ControlNodes, n)
		}
	}
	var errs []error
	for i := range inv.Devices {
		dev := &inv.Devices[i]
		n, ok, err := d.node(fmt.Sprintf("nvidia%d", dev.Minor))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			errs = append(errs, fmt.Errorf("GPU %d (%s): device node %s is missing", dev.Index, dev.PCIBusID,
				filepath.Join(d.cfg.devRoot, "dev", fmt.Sprintf("nvidia%d", dev.Minor))))
			continue
		}
		check(n, "nvidia-frontend")
		dev.Node = n
		dev.DRM = d.drmNodes(dev.PCIBusID)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return d.discoverCaps(inv, proc, majors)
}

// drmNodes finds /dev/dri/cardN and renderDN of a GPU through sysfs.
func (d *Discoverer) drmNodes(busID string) []DeviceNode {
	if busID == "" {
		return nil
	}
	ents, err := os.ReadDir(filepath.Join(d.cfg.devRootMount, "sys/bus/pci/devices", strings.ToLower(busID), "drm"))
	if err != nil {
		return nil
	}
	var out []DeviceNode
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "card") && !strings.HasPrefix(name, "renderD") {
			continue
		}
		if n, ok, err := d.node("dri/" + name); err == nil && ok {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// discoverCaps fills MIG capability nodes and IMEX channels.
func (d *Discoverer) discoverCaps(inv *Inventory, proc procFiles, majors map[string]int64) error {
	minors, err := proc.migMinors()
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	capNode := func(name string) (DeviceNode, bool, error) {
		m, ok := minors[name]
		if !ok {
			return DeviceNode{}, false, nil
		}
		n, ok, err := d.node(fmt.Sprintf("nvidia-caps/nvidia-cap%d", m))
		if err == nil && ok {
			if mj, known := majors["nvidia-caps"]; known && mj != n.Major {
				inv.Warnings = append(inv.Warnings, Warning{WarnStaleNode, fmt.Sprintf("%s has major %d but /proc/devices lists nvidia-caps as %d", n.HostPath, n.Major, mj)})
			}
		}
		return n, ok, err
	}
	for _, name := range []string{"config", "monitor"} {
		if n, ok, err := capNode(name); err != nil {
			return err
		} else if ok {
			inv.MIGControl = append(inv.MIGControl, n)
		}
	}
	var errs []error
	for i := range inv.Devices {
		dev := &inv.Devices[i]
		for j := range dev.MIG {
			mig := &dev.MIG[j]
			for _, name := range []string{
				fmt.Sprintf("gpu%d/gi%d/access", dev.Minor, mig.GI),
				fmt.Sprintf("gpu%d/gi%d/ci%d/access", dev.Minor, mig.GI, mig.CI),
			} {
				n, ok, err := capNode(name)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				if !ok {
					errs = append(errs, fmt.Errorf("MIG device %s (GPU %d GI %d CI %d): no capability node for %s (is nvidia-caps loaded and /dev/nvidia-caps populated?)",
						mig.UUID, dev.Index, mig.GI, mig.CI, name))
					continue
				}
				mig.Caps = append(mig.Caps, n)
			}
		}
	}
	for _, e := range readDirNames(filepath.Join(d.cfg.devRootMount, "dev/nvidia-caps-imex-channels")) {
		if n, ok, err := d.node("nvidia-caps-imex-channels/" + e); err == nil && ok {
			inv.IMEXChannels = append(inv.IMEXChannels, n)
		}
	}
	return errors.Join(errs...)
}

func readDirNames(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(ents))
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}
