package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/nvbind/nvbind/test/testutil"
)

func run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := newRootCommandFor(args)
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func TestGenerateWithoutDriverWritesNothing(t *testing.T) {
	t.Parallel()
	empty, outDir := t.TempDir(), t.TempDir()
	_, _, err := run(t, "cdi", "generate", "--driver-root", empty, "--dev-root", empty, "--output", outDir+"/")
	if err == nil || !strings.Contains(err.Error(), "no NVIDIA driver found") || strings.Count(err.Error(), "\n") > 0 {
		t.Fatalf("err = %v", err)
	}
	if ents, _ := os.ReadDir(outDir); len(ents) != 0 {
		t.Fatalf("wrote %d files", len(ents))
	}
}

func TestBadFlagsNameTheInputAndChoices(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--capabilities", "compute,gpu"}, []string{"--capabilities", `"gpu"`, "compute, compat32"}},
		{[]string{"--device-name-strategy", "name"}, []string{"--device-name-strategy", `"name"`, "index, type-index, uuid"}},
		{[]string{"--disable-hooks", "ldcache"}, []string{"--disable-hooks", `"ldcache"`, "update-ldcache"}},
		{[]string{"--format", "toml"}, []string{"--format", `"toml"`, "json, yaml"}},
		{[]string{"--output", filepath.Join(root, "spec.txt")}, []string{"spec.txt", ".json or .yaml"}},
		{[]string{"--output", filepath.Join(root, "spec.json"), "--format", "yaml"}, []string{"--format yaml conflicts"}},
		{[]string{"--driver-root", filepath.Join(root, "missing")}, []string{"--driver-root", "missing"}},
		{[]string{"--hook-path", "nvbind"}, []string{"hook path", "not absolute"}},
	} {
		args := append([]string{"cdi", "generate", "--dev-root", root}, tc.args...)
		if !strings.Contains(strings.Join(tc.args, " "), "--driver-root") {
			args = append(args, "--driver-root", testDriverRootOr(t, root))
		}
		_, _, err := run(t, args...)
		if err == nil {
			t.Errorf("%v: no error", tc.args)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q lacks %q", tc.args, err, w)
			}
		}
	}
}

// testDriverRootOr returns the debian-535 fixture when built (so flag errors are not
// masked by "no driver"), else fallback.
func testDriverRootOr(t *testing.T, fallback string) string {
	p := filepath.Join(os.Getenv(testutil.EnvRoots), "debian-535")
	if os.Getenv(testutil.EnvRoots) == "" {
		p = "/var/tmp/nvbind-roots/debian-535"
	}
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return fallback
}

func TestGenerateAndValidateOnFixture(t *testing.T) {
	root := testutil.DriverRoot(t, "flat-535")
	dir := t.TempDir()
	_, stderr, err := run(t, "cdi", "generate", "--no-nvml", "--driver-root", root, "--dev-root", root,
		"--hook-path", "/usr/bin/nvbind", "--output", dir+"/")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "nvidia.com-gpu.yaml")
	if !strings.Contains(stderr, "wrote "+p) || !strings.Contains(stderr, "cdiVersion 0.5.0") {
		t.Errorf("stderr = %q", stderr)
	}
	// the same spec again: the file stays as it is, and the command says so
	_, stderr, err = run(t, "cdi", "generate", "--no-nvml", "--driver-root", root, "--dev-root", root,
		"--hook-path", "/usr/bin/nvbind", "--output", dir+"/")
	if err != nil || !strings.Contains(stderr, "unchanged "+p+": 7 devices of nvidia.com/gpu") {
		t.Errorf("second generate: stderr = %q, %v", stderr, err)
	}
	out, _, err := run(t, "cdi", "validate", p)
	if err != nil || !strings.Contains(out, "valid, cdiVersion 0.5.0, kind nvidia.com/gpu, 7 devices") {
		t.Fatalf("validate: %q %v", out, err)
	}
	out, _, err = run(t, "cdi", "list", "--spec-dir", dir)
	if err != nil || !strings.Contains(out, "nvidia.com/gpu=gpu1\n") || !strings.Contains(out, "nvidia.com/gpu=all\n") {
		t.Fatalf("list: %q %v", out, err)
	}
	out, _, err = run(t, "info", "--no-nvml", "--driver-root", root, "--dev-root", root)
	if err != nil || !strings.Contains(out, "GPU source:  procfs") || !strings.Contains(out, "535.261.03 (proprietary kernel module") {
		t.Fatalf("info: %q %v", out, err)
	}
	// without a kernel module NVML is not started: it would fail, and on its way create
	// /dev/nvidiactl on the host (as root), which a demo on a sample root must not do
	_, noModule := os.Stat("/proc/driver/nvidia/version")
	_, noCtl := os.Stat("/dev/nvidiactl")
	out, _, err = run(t, "info", "--driver-root", root, "--dev-root", root)
	if err != nil || !strings.Contains(out, "NVML unavailable") {
		t.Fatalf("info with the real (unloadable) NVML: %q %v", out, err)
	}
	if noModule != nil {
		if !strings.Contains(out, "no NVIDIA kernel module is loaded") {
			t.Errorf("info does not say why NVML was not started: %q", out)
		}
		if _, err := os.Stat("/dev/nvidiactl"); noCtl != nil && err == nil {
			t.Error("info created /dev/nvidiactl on the host")
		}
	}
}

// TestEveryCommandHasExamples walks the command tree: every command shows examples in
// its --help.
func TestEveryCommandHasExamples(t *testing.T) {
	t.Parallel()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Name() != "help" && c.Name() != "completion" && c.Parent() != nil && (c.Parent().Name() != "completion") && c.Example == "" {
			t.Errorf("%q has no examples", c.CommandPath())
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRootCommand())
}

// TestHelpAnnotationKeysAreValid checks every annotation or label key that a help text
// teaches with Kubernetes' own validation: a key the API server rejects must never be
// shown to users.
func TestHelpAnnotationKeysAreValid(t *testing.T) {
	t.Parallel()
	var keys []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		keys = append(keys, testutil.AnnotationKeysIn(c.Long+"\n"+c.Example+"\n"+c.Flags().FlagUsages())...)
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRootCommand())
	if !slices.Contains(keys, "gpus.nvbind.io/container.cuda") {
		t.Errorf("the help no longer teaches the per-container key; keys found: %v", keys)
	}
	for _, bad := range testutil.InvalidKeys(keys) {
		t.Error(bad)
	}
}

// TestHelpShowsNoMachinePath: --hook-path's default is worked out when a spec is built,
// so --help is the same on every machine.
func TestHelpShowsNoMachinePath(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"cdi", "generate", "--help"}, {"nri", "--help"}, {"device-plugin", "--help"}} {
		out, _, err := run(t, args...)
		if err != nil || strings.Contains(out, filepath.Dir(exe)) || !strings.Contains(out, "--hook-path") {
			t.Errorf("%v: %v\n%s", args, err, out)
		}
	}
}

// TestFlagPlaceholders: pflag turns `backquoted` words of a flag's usage into its
// placeholder in --help (--containerd-binary config dump), so a usage text may only
// backquote a single word that reads as the value's name.
func TestFlagPlaceholders(t *testing.T) {
	t.Parallel()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			name, _ := pflag.UnquoteUsage(f)
			if strings.ContainsAny(name, " \t") {
				t.Errorf("%s --%s shows the placeholder %q in --help", c.CommandPath(), f.Name, name)
			}
		})
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRootCommand())
}

// TestTopCommandsBuiltAlone: a command line that starts with a top-level command builds
// that command alone, under the name its table gives; any other line builds them all.
func TestTopCommandsBuiltAlone(t *testing.T) {
	var all []string
	for _, c := range newRootCommand().Commands() {
		all = append(all, c.Name())
	}
	var names []string
	for _, c := range topCommands {
		names = append(names, c.name)
		sub := newRootCommandFor([]string{c.name, "--help"}).Commands()
		if len(sub) != 1 || sub[0].Name() != c.name {
			t.Errorf("%s alone: %d commands", c.name, len(sub))
		}
	}
	slices.Sort(names)
	if !slices.Equal(all, names) { // cobra sorts them
		t.Fatalf("whole tree %v, table %v", all, names)
	}
	for _, args := range [][]string{nil, {}, {"help", "cdi"}, {"--log-level", "debug", "cdi"}, {"cdi-generate"}, {"__complete", "c"}, {"completion", "bash"}} {
		if n := len(newRootCommandFor(args).Commands()); n != len(topCommands) {
			t.Errorf("%q: %d commands, want all %d", args, n, len(topCommands))
		}
	}
	// help and a flag before the command still work on the whole tree
	out, _, err := run(t, "help")
	if err != nil || !strings.Contains(out, "device-plugin") || !strings.Contains(out, "layout") {
		t.Errorf("help: %q %v", out, err)
	}
	_, _, err = run(t, "--log-level", "debug", "version")
	if err != nil {
		t.Errorf("a flag before the command: %v", err)
	}
}
