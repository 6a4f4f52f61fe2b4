package request

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/version"
)

// ErrUnmetRequirement is an NVIDIA_REQUIRE_* the node does not meet.
var ErrUnmetRequirement = errors.New("unmet requirement")

// Constraint is one condition such as cuda>=12.2 or brand=tesla.
type Constraint struct{ Name, Op, Value string }

func (c Constraint) String() string { return c.Name + c.Op + c.Value }

// Requirement is one NVIDIA_REQUIRE_<name> variable: a list of alternatives (space
// separated, ORed), each a list of constraints (comma separated, ANDed).
type Requirement struct {
	Var, Raw string
	Any      [][]Constraint
}

var constraintNames = map[string]bool{"cuda": true, "driver": true, "arch": true, "brand": true}

// ops in match order: two-character operators first.
var ops = []string{">=", "<=", "==", "!=", ">", "<", "="}

// ParseRequirement parses the value of one NVIDIA_REQUIRE_* variable.
func ParseRequirement(name, v string) (Requirement, error) {
	r := Requirement{Var: name, Raw: v}
	if len(v) > MaxValueBytes {
		return r, fmt.Errorf("env %s: a requirement of %d bytes is longer than the %d it may be", truncate(name, 64), len(v), MaxValueBytes)
	}
	for _, alt := range strings.Fields(v) {
		var all []Constraint
		for _, term := range strings.Split(alt, ",") {
			if term == "" {
				continue
			}
			c, err := parseConstraint(term)
			if err != nil {
				return r, fmt.Errorf("env %s=%q: %w", truncate(name, 64), truncate(v, 128), err)
			}
			all = append(all, c)
		}
		if len(all) > 0 {
			r.Any = append(r.Any, all)
		}
	}
	return r, nil
}

func parseConstraint(term string) (Constraint, error) {
	for _, op := range ops {
		i := strings.Index(term, op)
		if i <= 0 {
			continue
		}
		c := Constraint{Name: strings.ToLower(term[:i]), Op: op, Value: term[i+len(op):]}
		if c.Op == "==" {
			c.Op = "="
		}
		if !constraintNames[c.Name] {
			return c, fmt.Errorf("unknown constraint %q in %q (valid: cuda, driver, arch, brand)", truncate(c.Name, 32), truncate(term, 64))
		}
		if c.Value == "" {
			return c, fmt.Errorf("constraint %q has no value", truncate(term, 64))
		}
		if c.Name == "brand" {
			if c.Op != "=" && c.Op != "!=" {
				return c, fmt.Errorf("brand takes = or != (got %q)", truncate(term, 64))
			}
			c.Value = strings.ToLower(c.Value)
		} else if _, err := version.Parse(c.Value); err != nil {
			return c, fmt.Errorf("%s wants a dotted version number (got %q)", c.Name, truncate(c.Value, 32))
		}
		return c, nil
	}
	return Constraint{}, fmt.Errorf("constraint %q has no operator (valid: >=, <=, >, <, =, !=)", truncate(term, 64))
}

// parseRequirements parses NVIDIA_REQUIRE_* values by name, in name order.
func parseRequirements(env map[string]string) ([]Requirement, error) {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []Requirement
	for _, k := range keys {
		r, err := ParseRequirement(k, env[k])
		if err != nil {
			return nil, err
		}
		if len(r.Any) > 0 {
			out = append(out, r)
		}
	}
	return out, nil
}

func holds(op string, cmp int) bool {
	switch op {
	case ">=":
		return cmp >= 0
	case "<=":
		return cmp <= 0
	case ">":
		return cmp > 0
	case "<":
		return cmp < 0
	case "=":
		return cmp == 0
	case "!=":
		return cmp != 0
	}
	return false
}

// check evaluates one constraint; the string explains a failure.
func (c Constraint) check(drv gpu.Driver, devs []gpu.Device) (bool, string) {
	versionCheck := func(have, what string) (bool, string) {
		if have == "" {
			return false, fmt.Sprintf("%s is unknown on this node (NVML unavailable)", what)
		}
		hv, err := version.Parse(have)
		if err != nil {
			return false, fmt.Sprintf("%s %q is not a version", what, truncate(have, 32))
		}
		want, _ := version.Parse(c.Value)
		if holds(c.Op, version.Compare(hv, want)) {
			return true, ""
		}
		return false, fmt.Sprintf("%s is %s", what, have)
	}
	switch c.Name {
	case "cuda":
		return versionCheck(drv.CUDAVersion, "the driver's CUDA version")
	case "driver":
		return versionCheck(drv.Version, "the driver version")
	case "arch":
		for _, d := range devs {
			if ok, why := versionCheck(d.Arch, fmt.Sprintf("the compute capability of GPU %d", d.Index)); !ok {
				return false, why
			}
		}
	case "brand":
		for _, d := range devs {
			if d.Brand == "" {
				return false, fmt.Sprintf("the brand of GPU %d is unknown (NVML unavailable)", d.Index)
			}
			if (d.Brand == c.Value) != (c.Op == "=") {
				return false, fmt.Sprintf("GPU %d is %s", d.Index, d.Brand)
			}
		}
	}
	return true, ""
}

// Check evaluates the requirement against the driver and the selected GPUs.
func (r Requirement) Check(drv gpu.Driver, devs []gpu.Device) error {
	var why []string
	for _, all := range r.Any {
		ok := true
		for _, c := range all {
			if good, reason := c.check(drv, devs); !good {
				ok = false
				why = append(why, c.String()+": "+reason)
				break
			}
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("%w %s=%q (%s)", ErrUnmetRequirement, truncate(r.Var, 64), truncate(r.Raw, 128), strings.Join(why, "; "))
}
