package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// settingsOf runs applySettings on the "cdi generate" command with args and returns the
// resulting flag values.
func settingsOf(t *testing.T, config string, env map[string]string, args ...string) (map[string]string, error) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	root := newRootCommand()
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
`
	got, err := settingsOf(t, config, map[string]string{"NVBIND_FORMAT": "yaml"}, "--vendor", "flag.example.com")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"driver-root":  "/from-config-table", // the command's table beats the top level
		"format":       "yaml",               // env beats the config file
		"capabilities": "compute,utility",    // lists join
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
