package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// defaultConfigFile is read when it exists; --config or $NVBIND_CONFIG names another.
const defaultConfigFile = "/etc/nvbind/config.toml"

// applySettings fills every flag the user did not set, in this order: the environment
// (NVBIND_ plus the flag name in capitals, dashes as underscores), then the config file's
// table of this command ([nri], [cdi.generate]), then its top-level keys. Flags win.
func applySettings(cmd *cobra.Command, configPath string, explicit bool) error {
	file, err := loadConfig(configPath, explicit)
	if err != nil {
		return err
	}
	if len(file) == 0 && !anyEnv("NVBIND_") {
		// nothing to apply: most runs (a hook-free CLI call, a unit with flags) take this
		// path, which spares walking every command's flags on a start that is timed
		return nil
	}
	// the file and the variables speak of every command: they are checked against the
	// whole tree, also where this run built its own command alone (newRootCommandFor)
	whole := newRootCommand()
	if err := validateConfig(whole, file, configPath); err != nil {
		return err
	}
	table := file
	for _, part := range strings.Fields(strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name())) {
		t, _ := table[part].(map[string]any)
		table = t
	}
	var errs []error
	ambiguous := ambiguousFlags(whole)
	scope := strings.ToUpper(strings.Join(strings.Fields(strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name())), "_"))
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "config" || f.Name == "help" {
			return
		}
		// $NVBIND_<COMMAND>_<FLAG> for this command (NVBIND_CDI_GENERATE_FORMAT), then
		// $NVBIND_<FLAG> for a flag that means the same in every command
		name := strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		envs := []string{"NVBIND_" + scope + "_" + name}
		if !ambiguous[f.Name] {
			envs = append(envs, "NVBIND_"+name)
		}
		for _, env := range envs {
			if v, ok := os.LookupEnv(env); ok {
				if err := cmd.Flags().Set(f.Name, v); err != nil {
					errs = append(errs, fmt.Errorf("$%s=%q: %w", env, v, err))
				}
				return
			}
		}
		for _, src := range []struct {
			where string
			t     map[string]any
		}{{"[" + strings.TrimSpace(strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name())) + "]", table}, {"top level", file}} {
			v, ok := src.t[f.Name]
			if !ok {
				continue
			}
			if _, isTable := v.(map[string]any); isTable {
				continue
			}
			if err := cmd.Flags().Set(f.Name, configValue(v)); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s key %q = %v: %w", configPath, src.where, f.Name, v, err))
			}
			return
		}
	})
	return errors.Join(errs...)
}

// anyEnv reports whether a variable of the environment starts with prefix.
func anyEnv(prefix string) bool {
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, prefix) {
			return true
		}
	}
	return false
}

// ambiguousFlags are the flag names whose meaning (usage text) differs between commands,
// such as --format (text or json for info and doctor, json or yaml for cdi generate):
// they take only the command's own variable.
func ambiguousFlags(root *cobra.Command) map[string]bool {
	usage := map[string]string{}
	out := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if u, ok := usage[f.Name]; ok && u != f.Usage {
				out[f.Name] = true
			}
			usage[f.Name] = f.Usage
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return out
}

func configValue(v any) string {
	if list, ok := v.([]any); ok {
		parts := make([]string, 0, len(list))
		for _, x := range list {
			parts = append(parts, fmt.Sprint(x))
		}
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(v)
}

func loadConfig(path string, explicit bool) (map[string]any, error) {
	data, err := os.ReadFile(path) //nolint:gosec // the config file the user names
	if errors.Is(err, os.ErrNotExist) && !explicit {
		return map[string]any{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	m := map[string]any{}
	if err := toml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return m, nil
}

// validateConfig rejects keys that no flag has, naming the valid ones.
func validateConfig(root *cobra.Command, file map[string]any, path string) error {
	all := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) { all[f.Name] = true })
		c.PersistentFlags().VisitAll(func(f *pflag.Flag) { all[f.Name] = true })
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	var check func(table map[string]any, cmd *cobra.Command, where string) error
	check = func(table map[string]any, cmd *cobra.Command, where string) error {
		for k, v := range table {
			if sub, ok := v.(map[string]any); ok {
				var child *cobra.Command
				for _, c := range cmd.Commands() {
					if c.Name() == k {
						child = c
					}
				}
				if child == nil {
					return fmt.Errorf("config file %s: unknown section [%s%s]", path, where, k)
				}
				if err := check(sub, child, where+k+"."); err != nil {
					return err
				}
				continue
			}
			known := all[k]
			if cmd != root {
				known = cmd.Flags().Lookup(k) != nil || cmd.InheritedFlags().Lookup(k) != nil
			}
			if !known {
				var names []string
				cmd.Flags().VisitAll(func(f *pflag.Flag) { names = append(names, f.Name) })
				if cmd == root {
					names = names[:0]
					for n := range all {
						names = append(names, n)
					}
				}
				sort.Strings(names)
				section := "at the top level"
				if where != "" {
					section = "in [" + strings.TrimSuffix(where, ".") + "]"
				}
				return fmt.Errorf("config file %s: unknown key %q %s (valid: %s)", path, k, section, strings.Join(names, ", "))
			}
		}
		return nil
	}
	return check(file, root, "")
}
