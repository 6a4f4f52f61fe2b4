package gpu

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvbind/nvbind/test/testutil"
)

// A tree spec maps rooted paths to what they hold:
//
//	"elf:SONAME"         a 64-bit shared object with that SONAME
//	"elf:SONAME:STRING"  the same, embedding STRING (e.g. a driver version)
//	"link:TARGET"        a symbolic link
//	"dev:MAJOR:MINOR"    a stand-in for a device node, read by fakeStater
//	"dir"                an empty folder
//	anything else        a regular file with that content
type tree map[string]string

func (tr tree) build(t *testing.T, root string) {
	t.Helper()
	for p, v := range tr {
		host := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case strings.HasPrefix(v, "elf:"):
			parts := strings.SplitN(strings.TrimPrefix(v, "elf:"), ":", 2)
			extra := ""
			if len(parts) == 2 {
				extra = parts[1]
			}
			testutil.BuildSharedObject(t, host, parts[0], 64, extra)
		case strings.HasPrefix(v, "link:"):
			err = os.Symlink(strings.TrimPrefix(v, "link:"), host)
		case v == "dir":
			err = os.MkdirAll(host, 0o755)
		default:
			err = os.WriteFile(host, []byte(v), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// fakeStater reads "dev:MAJOR:MINOR" files as character devices.
type fakeStater struct{}

func (fakeStater) Stat(p string) (DeviceNode, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return DeviceNode{}, err
	}
	var major, minor int64
	if _, err := fmt.Sscanf(string(data), "dev:%d:%d", &major, &minor); err != nil {
		return DeviceNode{}, fmt.Errorf("%s is not a character device", p)
	}
	return DeviceNode{HostPath: p, Major: major, Minor: minor, FileMode: fs.FileMode(0o666)}, nil
}

const v535 = "535.261.03"

// hostTree is the procfs/dev part of a host with two GPUs.
func hostTree() tree {
	return tree{
		"/proc/driver/nvidia/version":                       "NVRM version: NVIDIA UNIX x86_64 Kernel Module  " + v535 + "  Mon Jun 30 21:20:11 UTC 2025\n",
		"/proc/driver/nvidia/params":                        "ModifyDeviceFiles: 1\n",
		"/proc/driver/nvidia/gpus/0000:3b:00.0/information": "Model: \t\t NVIDIA H100\nGPU UUID: \t GPU-aaaa\nBus Location: \t 0000:3b:00.0\nDevice Minor: \t 0\n",
		"/proc/driver/nvidia/gpus/0000:86:00.0/information": "Model: \t\t NVIDIA H100\nGPU UUID: \t GPU-bbbb\nBus Location: \t 0000:86:00.0\nDevice Minor: \t 1\n",
		"/proc/devices":         "Character devices:\n195 nvidia-frontend\n226 drm\n508 nvidia-uvm\n510 nvidia-caps\n",
		"/dev/nvidia0":          "dev:195:0",
		"/dev/nvidia1":          "dev:195:1",
		"/dev/nvidiactl":        "dev:195:255",
		"/dev/nvidia-uvm":       "dev:508:0",
		"/dev/nvidia-uvm-tools": "dev:508:1",
		"/sys/bus/pci/devices/0000:3b:00.0/drm/card0":      "dir",
		"/sys/bus/pci/devices/0000:3b:00.0/drm/renderD128": "dir",
		"/dev/dri/card0":      "dev:226:0",
		"/dev/dri/renderD128": "dev:226:128",
	}
}

func (tr tree) with(more tree) tree {
	out := tree{}
	for k, v := range tr {
		out[k] = v
	}
	for k, v := range more {
		if v == "" {
			delete(out, k)
			continue
		}
		out[k] = v
	}
	return out
}
