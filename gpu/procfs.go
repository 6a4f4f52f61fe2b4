package gpu

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/nvbind/nvbind/internal/fileio"
)

// maxProcFile bounds what is read from any procfs file.
const maxProcFile = 1 << 20

// procFiles reads the driver's procfs and the kernel's /proc/devices under a root.
type procFiles struct{ root string }

func (p procFiles) read(rel string) ([]byte, error) {
	return fileio.ReadFile(filepath.Join(p.root, rel), maxProcFile)
}

// ParseVersionFile parses /proc/driver/nvidia/version.
func ParseVersionFile(data []byte) (string, Flavour, error) {
	if v := moduleVersion(data, "NVRM version: NVIDIA UNIX Open Kernel Module for ", false); v != "" {
		return v, FlavourOpen, nil
	}
	if v := moduleVersion(data, "NVRM version: NVIDIA UNIX ", true); v != "" {
		return v, FlavourProprietary, nil
	}
	line, _, _ := bytes.Cut(data, []byte("\n"))
	return "", FlavourUnknown, fmt.Errorf("unrecognised driver version line %q: expected \"NVRM version: NVIDIA UNIX ... Kernel Module <version> ...\"", truncate(string(line), 120))
}

// moduleVersion finds, at the first place in data where it can, prefix, a word (a run
// of non-space characters), with kernelModule " Kernel Module" after it, then white
// space and a version, and returns the version: digits, then one or more dots each with
// digits. These are the patterns
//
//	NVRM version: NVIDIA UNIX Open Kernel Module for \S+\s+(\d+(?:\.\d+)+)
//	NVRM version: NVIDIA UNIX \S+ Kernel Module\s+(\d+(?:\.\d+)+)
//
// without compiling them, which a short command paid for (FuzzModuleVersion keeps them
// equal). Each step has one way to match: a word ends at the first space, and white
// space at the first digit.
func moduleVersion(data []byte, prefix string, kernelModule bool) string {
	for rest := data; ; {
		i := bytes.Index(rest, []byte(prefix))
		if i < 0 {
			return ""
		}
		rest = rest[i+len(prefix):]
		if v := versionAfterWord(rest, kernelModule); v != "" {
			return v
		}
	}
}

func versionAfterWord(b []byte, kernelModule bool) string {
	i := 0
	for i < len(b) && !isRE2Space(b[i]) {
		i++
	}
	if i == 0 {
		return ""
	}
	b = b[i:]
	if kernelModule {
		var ok bool
		if b, ok = bytes.CutPrefix(b, []byte(" Kernel Module")); !ok {
			return ""
		}
	}
	i = 0
	for i < len(b) && isRE2Space(b[i]) {
		i++
	}
	if i == 0 {
		return ""
	}
	b = b[i:]
	// digits, then as many ".digits" as follow
	end, dots := 0, 0
	for end < len(b) && isDigit(b[end]) {
		end++
	}
	if end == 0 {
		return ""
	}
	for end+1 < len(b) && b[end] == '.' && isDigit(b[end+1]) {
		end += 2
		for end < len(b) && isDigit(b[end]) {
			end++
		}
		dots++
	}
	if dots == 0 {
		return ""
	}
	return string(b[:end])
}

// isRE2Space is \s in Go's regular expressions: no \v.
func isRE2Space(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r' }

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

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
	ents, err := os.ReadDir(dir)
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
		ents, err := os.ReadDir(filepath.Join(p.root, "proc/driver/nvidia/capabilities", fmt.Sprintf("gpu%d", g.Minor), "mig"))
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
