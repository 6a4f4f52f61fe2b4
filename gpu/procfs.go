package gpu

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/nvbind/nvbind/internal/fileio"
)

// maxProcFile bounds what is read from any procfs file.
const maxProcFile = 1 << 20

// procFiles reads the driver's procfs and the kernel's /proc/devices under a root.
type procFiles struct{ root string }

func (p procFiles) read(rel string) ([]byte, error) {
	return fileio.ReadFile(filepath.Join(p.root, rel), maxProcFile)
}

// The patterns are compiled when first used: compiling them at start was a measurable part
// of starting every command.
var (
	reOpenModule = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`NVRM version: NVIDIA UNIX Open Kernel Module for \S+\s+(\d+(?:\.\d+)+)`)
	})
	reModule = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`NVRM version: NVIDIA UNIX \S+ Kernel Module\s+(\d+(?:\.\d+)+)`)
	})
)

// ParseVersionFile parses /proc/driver/nvidia/version.
func ParseVersionFile(data []byte) (string, Flavour, error) {
	if m := reOpenModule().FindSubmatch(data); m != nil {
		return string(m[1]), FlavourOpen, nil
	}
	if m := reModule().FindSubmatch(data); m != nil {
		return string(m[1]), FlavourProprietary, nil
	}
	line, _, _ := bytes.Cut(data, []byte("\n"))
	return "", FlavourUnknown, fmt.Errorf("unrecognised driver version line %q: expected \"NVRM version: NVIDIA UNIX ... Kernel Module <version> ...\"", truncate(string(line), 120))
}

func (p procFiles) version() (string, Flavour, error) {
	data, err := p.read("proc/driver/nvidia/version")
	if err != nil {
		return "", FlavourUnknown, err
	}
	v, fl, err := ParseVersionFile(data)
	if err != nil {
		return "", fl, fmt.Errorf("%s: %w", filepath.Join(p.root, "proc/driver/nvidia/version"), err)
	}
	return v, fl, nil
}

// ParseKeyValues parses the "Key: value" lines of the driver's procfs files (params,
// gpus/<bdf>/information). Values are trimmed; lines without a colon are skipped.
func ParseKeyValues(data []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k = strings.TrimSpace(k)
		if k == "" {
			continue
		}
		out[k] = strings.TrimSpace(v)
	}
	return out
}

func (p procFiles) modifyDeviceFiles() (bool, error) {
	data, err := p.read("proc/driver/nvidia/params")
	if err != nil {
		return false, err
	}
	v, ok := ParseKeyValues(data)["ModifyDeviceFiles"]
	if !ok {
		return false, fmt.Errorf("no ModifyDeviceFiles in params")
	}
	return v != "0", nil
}

// procGPU is what proc/driver/nvidia/gpus/<bdf>/information says of one GPU.
type procGPU struct {
	BusID, UUID, Model string
	Minor              int
}

func (p procFiles) gpus() ([]procGPU, error) {
	dir := filepath.Join(p.root, "proc/driver/nvidia/gpus")
	ents, err := fileio.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []procGPU
	for _, e := range ents {
		data, err := p.read(filepath.Join("proc/driver/nvidia/gpus", e.Name(), "information"))
		if err != nil {
			return nil, err
		}
		g, err := parseInformation(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, e.Name(), "information"), err)
		}
		if g.BusID == "" {
			g.BusID = e.Name()
		}
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].BusID < out[j].BusID })
	return out, nil
}

// hasMIGInstances reports whether any of the GPUs has a MIG GPU instance: the driver
// lists each under /proc/driver/nvidia/capabilities/gpu<minor>/mig/gi<N>.
func (p procFiles) hasMIGInstances(gpus []procGPU) bool {
	for _, g := range gpus {
		ents, err := fileio.ReadDir(filepath.Join(p.root, "proc/driver/nvidia/capabilities", fmt.Sprintf("gpu%d", g.Minor), "mig"))
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), "gi") {
				return true
			}
		}
	}
	return false
}

func parseInformation(data []byte) (procGPU, error) {
	kv := ParseKeyValues(data)
	g := procGPU{BusID: strings.ToLower(kv["Bus Location"]), UUID: kv["GPU UUID"], Model: kv["Model"]}
	m, err := strconv.Atoi(kv["Device Minor"])
	if err != nil || m < 0 || m > 254 {
		return g, fmt.Errorf("bad or missing \"Device Minor\" %q: expected 0-254", kv["Device Minor"])
	}
	g.Minor = m
	return g, nil
}

// ParseDevices parses /proc/devices into name → major for character devices.
func ParseDevices(data []byte) map[string]int64 {
	out := map[string]int64{}
	inChar := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "Character devices:":
			inChar = true
			continue
		case strings.HasSuffix(line, "devices:"):
			inChar = false
			continue
		}
		if !inChar {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || n < 0 {
			continue
		}
		if _, dup := out[f[1]]; !dup {
			out[f[1]] = n
		}
	}
	return out
}

func (p procFiles) devices() (map[string]int64, error) {
	data, err := p.read("proc/devices")
	if err != nil {
		return nil, err
	}
	return ParseDevices(data), nil
}

// MIGMinors maps capability names (gpu0/gi1/access, gpu0/gi1/ci0/access, config, monitor)
// to nvidia-caps minors, from proc/driver/nvidia-caps/mig-minors.
type MIGMinors map[string]int64

// ParseMIGMinors parses proc/driver/nvidia-caps/mig-minors.
func ParseMIGMinors(data []byte) (MIGMinors, error) {
	out := MIGMinors{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	n := 0
	for sc.Scan() {
		n++
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 {
			return nil, fmt.Errorf("line %d: %q: expected \"<name> <minor>\"", n, truncate(sc.Text(), 80))
		}
		m, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || m < 0 || m > 1<<20 {
			return nil, fmt.Errorf("line %d: bad minor %q", n, truncate(f[1], 20))
		}
		out[f[0]] = m
	}
	return out, sc.Err()
}

func (p procFiles) migMinors() (MIGMinors, error) {
	data, err := p.read("proc/driver/nvidia-caps/mig-minors")
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fs.ErrNotExist
		}
		return nil, err
	}
	return ParseMIGMinors(data)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
