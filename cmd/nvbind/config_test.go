package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// settingsOf runs applySettings on the "cdi generate" command with args and returns the
// resulting flag values. The tree is the one nvbind builds for that command line: cdi
// alone, while the file and the variables may speak of every command.
func settingsOf(t *testing.T, config string, env map[string]string, args ...string) (map[string]string, error) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	root := newRootCommandFor([]string{"cdi", "generate"})
	cmd, _, err := root.Find([]string{"cdi", "generate"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	if err := applySettings(cmd, p, true); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, n := range []string{"driver-root", "format", "capabilities", "vendor"} {
		out[n] = cmd.Flags().Lookup(n).Value.String()
	}
	return out, nil
}

func TestSettingsPrecedence(t *testing.T) {
	config := `driver-root = "/from-config-top"
vendor = "top.example.com"
[cdi.generate]
driver-root = "/from-config-table"
format = "json"
capabilities = ["compute", "utility"]
[nri]
socket = "/run/other.sock"
`
	got, err := settingsOf(t, config, map[string]string{"NVBIND_CDI_GENERATE_FORMAT": "yaml", "NVBIND_CAPABILITIES": "video"}, "--vendor", "flag.example.com")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"driver-root":  "/from-config-table", // the command's table beats the top level
		"format":       "yaml",               // env beats the config file
		"capabilities": "video",              // an unscoped variable of an unambiguous flag applies
		"vendor":       "flag.example.com",   // flags win
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

func TestSettingsRejectUnknownKeys(t *testing.T) {
	for _, tc := range []struct{ config, want string }{
		{`drivr-root = "/"`, `unknown key "drivr-root" at the top level`},
		{"[cdi.generate]\nsocket = \"/x\"\n", `unknown key "socket" in [cdi.generate] (valid:`},
		{"[cdi.gen]\nformat = \"json\"\n", "unknown section [cdi.gen]"},
		{"format = [", "config file"},
	} {
		_, err := settingsOf(t, tc.config, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.config, err, tc.want)
		}
	}
}

// TestAmbiguousEnvIsScoped: --format means text|json for info and json|yaml for cdi
// generate, so $NVBIND_FORMAT applies to neither; each command has its own variable.
func TestAmbiguousEnvIsScoped(t *testing.T) {
	t.Setenv("NVBIND_FORMAT", "yaml")
	got, err := settingsOf(t, "", nil)
	if err != nil || got["format"] != "" {
		t.Errorf("cdi generate took $NVBIND_FORMAT: %q %v", got["format"], err)
	}
	t.Setenv("NVBIND_INFO_FORMAT", "json")
	root := newRootCommand()
	cmd, _, err := root.Find([]string{"info"})
	if err != nil {
		t.Fatal(err)
	}
	if err := applySettings(cmd, filepath.Join(t.TempDir(), "none.toml"), false); err != nil {
		t.Fatalf("info with NVBIND_FORMAT=yaml set: %v", err)
	}
	if v := cmd.Flags().Lookup("format").Value.String(); v != "json" {
		t.Errorf("info --format = %q, want json from $NVBIND_INFO_FORMAT", v)
	}
}

// TestHookIgnoresConfig: the hook runs on every GPU container start; a broken config
// file or $NVBIND_* must not reach it.
func TestHookIgnoresConfig(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(bad, []byte("this is [not toml"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NVBIND_CONFIG", bad)
	t.Setenv("NVBIND_LDCONFIG", "relative")
	_, _, err := run(t, "info", "--driver-root", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "config file") {
		t.Fatalf("info with a broken config file: %v", err)
	}
	_, _, err = run(t, "hook", "update-ldcache", "--folder", "/drv")
	if err == nil || strings.Contains(err.Error(), "config file") || strings.Contains(err.Error(), "relative") {
		t.Errorf("the hook read the config or env: %v", err)
	}
}
