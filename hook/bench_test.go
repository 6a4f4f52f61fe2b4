package hook

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/test/testutil"
)

// hookBench prepares a bundle like the one a runtime hands the hook after applying the
// debian-535 spec: a busybox/glibc image root with the driver's libraries at their
// container paths, and the hook arguments a generated spec carries.
func hookBench(b *testing.B) (bin, state string, args []string) {
	testutil.RequiresRoot(b)
	driverRoot := testutil.DriverRoot(b, "debian-535")
	dir := b.TempDir()
	bin = testutil.BuildNVBind(b, dir)
	bundle := filepath.Join(dir, "bundle")
	rootfs := filepath.Join(bundle, "rootfs")
	testutil.BuildRootfs(b, rootfs)
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{"root":{"path":"rootfs"}}`), 0o644); err != nil {
		b.Fatal(err)
	}
	d, err := gpu.New(gpu.WithDriverRoot(driverRoot), gpu.WithDevRoot(driverRoot), gpu.WithoutNVML())
	if err != nil {
		b.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range inv.Files {
		if f.Kind != gpu.KindLibrary {
			continue
		}
		dst := filepath.Join(rootfs, f.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.Link(f.HostPath, dst); err != nil {
			b.Fatal(err)
		}
	}
	out, err := exec.Command(bin, "cdi", "generate", "--no-nvml", "--format", "json", "--driver-root", driverRoot,
		"--dev-root", driverRoot).Output()
	if err != nil {
		b.Fatal(err)
	}
	// the hook's arguments are the spec's: pull them out of the JSON
	i := bytes.Index(out, []byte(`"args": [`))
	j := bytes.Index(out[i:], []byte("]"))
	for _, line := range strings.Split(string(out[i+len(`"args": [`):i+j]), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(line), ","))
		if line != "" {
			args = append(args, strings.Trim(line, `"`))
		}
	}
	return bin, `{"ociVersion":"1.0.2","id":"bench","status":"creating","pid":` + strconv.Itoa(os.Getpid()) + `,"bundle":"` + bundle + `"}`, args[1:]
}

func runHook(b *testing.B, bin, state string, args ...string) {
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(state)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%v: %v\n%s", args, err, out)
	}
}

// BenchmarkHookStage times the whole hook stage of one container start: nvbind's single
// process against the chain of one process per action that a spec with separate hooks runs.
func BenchmarkHookStage(b *testing.B) {
	bin, state, args := hookBench(b)
	var links, folders, rest []string
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--link":
			links = append(links, args[i], args[i+1])
			i++
		case "--folder":
			folders = append(folders, args[i], args[i+1])
			i++
		case "--host-params":
			rest = append(rest, args[i], args[i+1])
			i++
		case "--host-driver-version":
			rest = append(rest, args[i], args[i+1])
			i++
		}
	}
	hookBin := testutil.HookBinary(bin)
	b.Run("nvbind-hook-all", func(b *testing.B) {
		for b.Loop() {
			runHook(b, hookBin, state, args...)
		}
	})
	b.Run("nvbind-full-binary-hook-all", func(b *testing.B) {
		for b.Loop() {
			runHook(b, bin, state, args...)
		}
	})
	b.Run("one-process-per-action", func(b *testing.B) {
		for b.Loop() {
			runHook(b, hookBin, state, append([]string{"hook", "create-symlinks"}, links...)...)
			runHook(b, hookBin, state, append([]string{"hook", "update-ldcache"}, folders...)...)
			runHook(b, hookBin, state, "hook", "disable-device-node-modification", rest[0], rest[1])
			runHook(b, hookBin, state, "hook", "enable-cuda-compat", rest[2], rest[3])
		}
	})
	b.Run("ldconfig-alone", func(b *testing.B) {
		root := filepath.Join(filepath.Dir(strings.Split(strings.Split(state, `"bundle":"`)[1], `"`)[0]), "bundle", "rootfs")
		cmdArgs := []string{"-r", root, "-X", "-C", "/etc/ld.so.cache"}
		for i := 1; i < len(folders); i += 2 {
			cmdArgs = append(cmdArgs, folders[i])
		}
		for b.Loop() {
			if out, err := exec.Command("/sbin/ldconfig", cmdArgs...).CombinedOutput(); err != nil {
				b.Fatalf("%v\n%s", err, out)
			}
		}
	})
}
