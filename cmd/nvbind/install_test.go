package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/spec"
	"github.com/nvbind/nvbind/test/driverroot"
	"github.com/nvbind/nvbind/test/testutil"
)

func TestInstallUninstall(t *testing.T) {
	bin := testutil.BuildNVBind(t, t.TempDir())
	dir := t.TempDir()
	prefix, units := filepath.Join(dir, "usr"), filepath.Join(dir, "units")
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append(args, "--prefix", prefix, "--unit-dir", units)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := run("install")
	for _, want := range []string{"installed " + prefix + "/bin/nvbind\n", "installed " + prefix + "/bin/nvbind-hook\n",
		"installed " + prefix + "/bin/nvbind-runtime\n", "installed " + prefix + "/bin/nvbind-guard -> nvbind-runtime\n",
		"installed " + units + "/nvbind-nri.service\n", "installed " + units + "/nvbind-cdi-refresh.service\n", "installed " + units + "/nvbind-layouts.service\n",
		"installed " + units + "/nvbind-runtime.socket\n", "installed " + units + "/nvbind-runtime.service\n", "enable with: systemctl"} {
		if !strings.Contains(out, want) {
			t.Errorf("install output lacks %q:\n%s", want, out)
		}
	}
	unit, err := os.ReadFile(filepath.Join(units, "nvbind-nri.service"))
	if err != nil || !strings.Contains(string(unit), "ExecStart="+prefix+"/bin/nvbind nri") || strings.Contains(string(unit), "@BINDIR@") {
		t.Fatalf("unit: %s %v", unit, err)
	}
	if again := run("install"); strings.Contains(again, "installed") || !strings.Contains(again, "unchanged "+prefix+"/bin/nvbind\n") {
		t.Errorf("second install changed files:\n%s", again)
	}
	if analyze, err := exec.LookPath("systemd-analyze"); err == nil {
		for _, u := range [][]string{{"nvbind-nri.service"}, {"nvbind-cdi-refresh.service"}, {"nvbind-layouts.service"},
			{"nvbind-runtime.socket", "nvbind-runtime.service"}} {
			args := []string{"verify"}
			for _, f := range u {
				args = append(args, filepath.Join(units, f))
			}
			if out, err := exec.Command(analyze, args...).CombinedOutput(); err != nil || len(out) > 0 {
				t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, out)
			}
		}
	} else if os.Getenv(testutil.EnvRoot) == "1" {
		t.Error("systemd-analyze is not installed (make deps installs systemd)")
	}
	// a staging uninstall leaves the host's specs; one given folder loses nvbind's specs only
	specs := filepath.Join(dir, "cdi")
	d, err := gpu.New(driverroot.Open(t, "debian-535").Options()...)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := d.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := spec.WriteDir(inv, spec.Options{HookPath: prefix + "/bin/nvbind-hook"}, specs, spec.FormatYAML); err != nil {
		t.Fatal(err)
	}
	// another install's spec: its hook is not the one removed here
	elsewhere, err := spec.Generate(inv, spec.Options{HookPath: "/opt/nvbind/bin/nvbind-hook"})
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.WriteFile(elsewhere, filepath.Join(specs, "nvbind-other.json"), spec.FormatJSON); err != nil {
		t.Fatal(err)
	}
	foreign := filepath.Join(specs, "other.yaml")
	if err := os.WriteFile(foreign, []byte("cdiVersion: 0.5.0\nkind: example.com/x\ndevices: [{name: a, containerEdits: {env: [A=1]}}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := run("uninstall"); strings.Contains(out, "/cdi/") {
		t.Errorf("a staging uninstall touched CDI specs:\n%s", out)
	}
	run("install")
	out = run("uninstall", "--cdi-spec-dir", specs)
	if !strings.Contains(out, "removed "+specs+"/nvidia.com-gpu.yaml\n") {
		t.Errorf("uninstall left nvbind's spec:\n%s", out)
	}
	// left: the other install's spec, the one nvbind did not write, and the IMEX channels'
	// spec, which calls no hook
	var left []string
	ents, _ := os.ReadDir(specs)
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if want := []string{"nvbind-other.json", "nvidia.com-imex-channel.yaml", "other.yaml"}; !slices.Equal(left, want) {
		t.Errorf("after uninstall the spec folder holds %v, want %v", left, want)
	}
	for _, want := range []string{"removed " + prefix + "/bin/nvbind\n", "removed " + units + "/nvbind-nri.service\n", "removed " + units + "/nvbind-layouts.service\n",
		"removed " + prefix + "/bin/nvbind-runtime\n", "removed " + prefix + "/bin/nvbind-guard\n", "removed " + units + "/nvbind-runtime.socket\n",
		"removed " + units + "/nvbind-runtime.service\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("uninstall output lacks %q:\n%s", want, out)
		}
	}
	// units outside /etc/systemd/system are not systemd's: the host's systemctl is never
	// run, nor the host's driver layouts touched
	if strings.Contains(out, "systemctl") || strings.Contains(out, "driver layout") {
		t.Errorf("uninstall ran the host's systemctl for a staging folder:\n%s", out)
	}
	if out, err := exec.Command(bin, "install", "--prefix", prefix, "--unit-dir", units, "--enable", "nri").CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "--enable runs systemctl") {
		t.Errorf("--enable with a staging unit folder: %v\n%s", err, out)
	}
	if _, err := exec.Command(bin, "install", "--components", "kernel").CombinedOutput(); err == nil {
		t.Error("an unknown component was accepted")
	}
}

// TestInstallDockerRuntime: --enable docker-runtime adds nvbind-runtime to daemon.json,
// keeping every other key; invalid JSON is refused with nothing written; uninstall takes
// out only what install put in.
func TestInstallDockerRuntime(t *testing.T) {
	bin := testutil.BuildNVBind(t, t.TempDir())
	dir := t.TempDir()
	prefix, daemon := filepath.Join(dir, "usr"), filepath.Join(dir, "daemon.json")
	run := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append(args, "--prefix", prefix, "--docker-config", daemon, "--components", "runtime")...).CombinedOutput()
		return string(out), err
	}
	orig := `{"features": {"cdi": true}, "log-driver": "journald", "runtimes": {"crun": {"path": "/usr/bin/crun", "runtimeArgs": ["--debug"]}}}`
	if err := os.WriteFile(daemon, []byte(orig), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := run("install", "--enable", "docker-runtime", "--as-nvidia", "--default")
	if err != nil || !strings.Contains(out, "restart dockerd") || !strings.Contains(out, "installed "+prefix+"/bin/nvidia-container-runtime -> nvbind-runtime") {
		t.Fatalf("install: %v\n%s", err, out)
	}
	var got struct {
		Features       map[string]bool `json:"features"`
		LogDriver      string          `json:"log-driver"`
		DefaultRuntime string          `json:"default-runtime"`
		Runtimes       map[string]struct {
			Path        string   `json:"path"`
			RuntimeArgs []string `json:"runtimeArgs"`
		} `json:"runtimes"`
	}
	data, _ := os.ReadFile(daemon)
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if !got.Features["cdi"] || got.LogDriver != "journald" || got.Runtimes["crun"].Path != "/usr/bin/crun" || len(got.Runtimes["crun"].RuntimeArgs) != 1 {
		t.Errorf("other keys lost: %s", data)
	}
	if got.Runtimes["nvbind"].Path != prefix+"/bin/nvbind-runtime" || got.Runtimes["nvidia"].Path != prefix+"/bin/nvidia-container-runtime" || got.DefaultRuntime != "nvbind" {
		t.Errorf("runtimes not added: %s", data)
	}
	if fi, err := os.Stat(daemon); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("daemon.json mode changed: %v %v", fi.Mode(), err)
	}
	if out, err := run("install", "--enable", "docker-runtime", "--as-nvidia", "--default"); err != nil || !strings.Contains(out, "unchanged "+daemon) {
		t.Errorf("second install: %v\n%s", err, out)
	}
	out, err = run("uninstall")
	if err != nil || !strings.Contains(out, "removed runtimes nvbind, nvidia") {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	data, _ = os.ReadFile(daemon)
	got.Runtimes, got.DefaultRuntime = nil, ""
	if err := json.Unmarshal(data, &got); err != nil || len(got.Runtimes) != 1 || got.DefaultRuntime != "" || got.LogDriver != "journald" {
		t.Errorf("after uninstall: %s", data)
	}
	bad := `{"features": {"cdi": true},}`
	_ = os.WriteFile(daemon, []byte(bad), 0o600)
	if out, err := run("install", "--enable", "docker-runtime"); err == nil || !strings.Contains(out, daemon+" is not valid JSON (line 1") {
		t.Errorf("invalid JSON: %v\n%s", err, out)
	}
	if data, _ := os.ReadFile(daemon); string(data) != bad {
		t.Error("invalid daemon.json was changed")
	}
	if out, err := run("install", "--default"); err == nil || !strings.Contains(out, "use it with --enable docker-runtime") {
		t.Errorf("--default alone: %v\n%s", err, out)
	}
}

// TestInstallDevChar: install makes a /dev/char link for every NVIDIA device node of the
// driver root's /dev, and doctor finds none missing after it.
func TestInstallDevChar(t *testing.T) {
	testutil.RequiresRoot(t) // the fixture's device nodes are copied
	bin := testutil.BuildNVBind(t, t.TempDir())
	root := driverroot.Copy(t, driverroot.Open(t, "debian-535"), filepath.Join(t.TempDir(), "root"))
	args := []string{"install", "--components", "dev-char", "--driver-root", root.Path, "--dev-root", root.Path, "--no-nvml"}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"dev/char/195:0 -> ../nvidia0", "dev/char/195:255 -> ../nvidiactl"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
	if target, err := os.Readlink(filepath.Join(root.Path, "dev/char/195:1")); err != nil || target != "../nvidia1" {
		t.Errorf("/dev/char/195:1 -> %q, %v", target, err)
	}
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil || !strings.Contains(string(out), "unchanged") {
		t.Errorf("second run: %v\n%s", err, out)
	}
}

// TestInstallUnitsEnabled: what --enable turns on; Docker's runtime brings the edit
// service's socket along when the units go to systemd's folder.
func TestInstallUnitsEnabled(t *testing.T) {
	for _, tc := range []struct {
		enable, components []string
		unitDir            string
		want               []string
	}{
		{[]string{"nri"}, []string{"binaries", "units"}, systemUnitDir, []string{"nvbind-nri.service"}},
		{[]string{"cdi-refresh", "runtime-service"}, []string{"binaries", "units"}, systemUnitDir, []string{"nvbind-cdi-refresh.service", "nvbind-runtime.socket"}},
		{[]string{"docker-runtime"}, []string{"binaries", "units"}, systemUnitDir, []string{"nvbind-runtime.socket"}},
		{[]string{"docker-runtime", "runtime-service"}, []string{"binaries", "units"}, systemUnitDir, []string{"nvbind-runtime.socket"}},
		{[]string{"docker-runtime"}, []string{"runtime"}, systemUnitDir, nil},
		{[]string{"docker-runtime"}, []string{"binaries", "units"}, "/tmp/staging", nil},
	} {
		f := &installFlags{enable: tc.enable, components: tc.components, unitDir: tc.unitDir}
		if got := f.units(); !slices.Equal(got, tc.want) {
			t.Errorf("--enable %v --components %v --unit-dir %s: %v, want %v", tc.enable, tc.components, tc.unitDir, got, tc.want)
		}
	}
}
