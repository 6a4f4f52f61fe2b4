package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
		"installed " + units + "/nvbind-nri.service\n", "installed " + units + "/nvbind-cdi-refresh.service\n", "enable with: systemctl"} {
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
		for _, u := range []string{"nvbind-nri.service", "nvbind-cdi-refresh.service"} {
			if out, err := exec.Command(analyze, "verify", filepath.Join(units, u)).CombinedOutput(); err != nil || len(out) > 0 {
				t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, out)
			}
		}
	} else if os.Getenv(testutil.EnvRoot) == "1" {
		t.Error("systemd-analyze is not installed (make deps installs systemd)")
	}
	out = run("uninstall")
	for _, want := range []string{"removed " + prefix + "/bin/nvbind\n", "removed " + units + "/nvbind-nri.service\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("uninstall output lacks %q:\n%s", want, out)
		}
	}
	// units outside /etc/systemd/system are not systemd's: the host's systemctl is never run
	if strings.Contains(out, "systemctl") {
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
