package spec

import (
	"bytes"
	"encoding/json"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	yaml "go.yaml.in/yaml/v2"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"
)

// marshalYAML writes exactly what sigs.k8s.io/yaml writes for v (its JSON form in
// yaml.v2's block style, keys sorted), several times faster: the decoded JSON is
// written as YAML directly, with yaml.v2 asked only how to write scalars whose plain form
// it could read as something other than a string. A value outside the shapes of a CDI
// spec (a key that is not a letters-only JSON field name, a scalar yaml.v2 writes over
// several lines) falls back to yaml.v2 for the whole document. FuzzMarshalYAML keeps
// the two byte-equal.
func marshalYAML(v any) ([]byte, error) {
	tree, err := jsonTree(v)
	if err != nil {
		return nil, err
	}
	e := yamlEmitter{quoted: map[string]string{}}
	if e.value(tree, 0, false) {
		return e.buf.Bytes(), nil
	}
	return yaml.Marshal(tree) // yaml.v2 orders map keys itself
}

// jsonTree is v's JSON form decoded generically (objects as map[string]any, numbers as
// json.Number): what sigs.k8s.io/yaml writes YAML from. A CDI spec's is built directly
// by specTree; anything else takes the round trip through encoding/json.
func jsonTree(v any) (any, error) {
	if s, ok := v.(*cdispecs.Spec); ok && s != nil {
		if tree, ok := specTree(s); ok {
			return tree, nil
		}
	}
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return nil, err
	}
	return tree, nil
}

// specTree builds the tree encoding/json's round trip gives for s, field by field as
// specs-go tags them (omitempty included), without reflection: in a short command the
// round trip's first use of reflection was most of the cost of writing a spec. It
// reports false for a string that is not valid UTF-8 (encoding/json replaces its bytes),
// and the caller takes the round trip then. TestSpecTree keeps it equal to the round
// trip for every field of the specs-go types, so a field added there fails the test
// until it is added here.
func specTree(s *cdispecs.Spec) (map[string]any, bool) {
	b := treeBuilder{ok: true}
	m := map[string]any{"cdiVersion": b.str(s.Version), "kind": b.str(s.Kind), "containerEdits": b.edits(&s.ContainerEdits)}
	if len(s.Annotations) > 0 {
		m["annotations"] = b.stringMap(s.Annotations)
	}
	var devs any // a nil slice is null: devices has no omitempty
	if s.Devices != nil {
		l := make([]any, len(s.Devices))
		for i := range s.Devices {
			d := &s.Devices[i]
			dm := map[string]any{"name": b.str(d.Name), "containerEdits": b.edits(&d.ContainerEdits)}
			if len(d.Annotations) > 0 {
				dm["annotations"] = b.stringMap(d.Annotations)
			}
			l[i] = dm
		}
		devs = l
	}
	m["devices"] = devs
	return m, b.ok
}

type treeBuilder struct{ ok bool }

func (b *treeBuilder) str(s string) any {
	if !utf8.ValidString(s) {
		b.ok = false
	}
	return s
}

// strs is a []string's tree; omitempty callers check the length first.
func (b *treeBuilder) strs(v []string) any {
	if v == nil {
		return nil
	}
	l := make([]any, len(v))
	for i, s := range v {
		l[i] = b.str(s)
	}
	return l
}

func (b *treeBuilder) stringMap(v map[string]string) map[string]any {
	m := make(map[string]any, len(v))
	for k, s := range v {
		m[b.str(k).(string)] = b.str(s)
	}
	return m
}

// set puts a string field tagged omitempty.
func (b *treeBuilder) set(m map[string]any, k, v string) {
	if v != "" {
		m[k] = b.str(v)
	}
}

// setStrs puts a []string field tagged omitempty.
func (b *treeBuilder) setStrs(m map[string]any, k string, v []string) {
	if len(v) > 0 {
		m[k] = b.strs(v)
	}
}

func (b *treeBuilder) edits(e *cdispecs.ContainerEdits) map[string]any {
	m := map[string]any{}
	b.setStrs(m, "env", e.Env)
	setList(m, "deviceNodes", e.DeviceNodes, b.deviceNode)
	setList(m, "netDevices", e.NetDevices, func(d *cdispecs.LinuxNetDevice) map[string]any {
		return map[string]any{"hostInterfaceName": b.str(d.HostInterfaceName), "name": b.str(d.Name)}
	})
	setList(m, "hooks", e.Hooks, func(h *cdispecs.Hook) map[string]any {
		hm := map[string]any{"hookName": b.str(h.HookName), "path": b.str(h.Path)}
		b.setStrs(hm, "args", h.Args)
		b.setStrs(hm, "env", h.Env)
		if h.Timeout != nil {
			hm["timeout"] = json.Number(strconv.Itoa(*h.Timeout))
		}
		return hm
	})
	setList(m, "mounts", e.Mounts, func(mt *cdispecs.Mount) map[string]any {
		mm := map[string]any{"hostPath": b.str(mt.HostPath), "containerPath": b.str(mt.ContainerPath)}
		b.setStrs(mm, "options", mt.Options)
		b.set(mm, "type", mt.Type)
		return mm
	})
	if r := e.IntelRdt; r != nil {
		rm := map[string]any{}
		b.set(rm, "closID", r.ClosID)
		b.set(rm, "l3CacheSchema", r.L3CacheSchema)
		b.set(rm, "memBwSchema", r.MemBwSchema)
		b.setStrs(rm, "schemata", r.Schemata)
		if r.EnableMonitoring {
			rm["enableMonitoring"] = true
		}
		m["intelRdt"] = rm
	}
	if len(e.AdditionalGIDs) > 0 {
		l := make([]any, len(e.AdditionalGIDs))
		for i, g := range e.AdditionalGIDs {
			l[i] = json.Number(strconv.FormatUint(uint64(g), 10))
		}
		m["additionalGids"] = l
	}
	return m
}

// setList puts a list field of pointers tagged omitempty: each element by elem, a nil one
// as null.
func setList[T any](m map[string]any, k string, v []*T, elem func(*T) map[string]any) {
	if len(v) == 0 {
		return
	}
	l := make([]any, len(v))
	for i, x := range v {
		if x != nil {
			l[i] = elem(x)
		}
	}
	m[k] = l
}

func (b *treeBuilder) deviceNode(d *cdispecs.DeviceNode) map[string]any {
	m := map[string]any{"path": b.str(d.Path)}
	b.set(m, "hostPath", d.HostPath)
	b.set(m, "type", d.Type)
	if d.Major != 0 {
		m["major"] = json.Number(strconv.FormatInt(d.Major, 10))
	}
	if d.Minor != 0 {
		m["minor"] = json.Number(strconv.FormatInt(d.Minor, 10))
	}
	if d.FileMode != nil {
		m["fileMode"] = json.Number(strconv.FormatUint(uint64(*d.FileMode), 10))
	}
	b.set(m, "permissions", d.Permissions)
	if d.UID != nil {
		m["uid"] = json.Number(strconv.FormatUint(uint64(*d.UID), 10))
	}
	if d.GID != nil {
		m["gid"] = json.Number(strconv.FormatUint(uint64(*d.GID), 10))
	}
	return m
}

type yamlEmitter struct {
	buf    bytes.Buffer
	quoted map[string]string // yaml.v2's rendering of scalars it decides on
}

func (e *yamlEmitter) indent(n int) {
	for range n {
		e.buf.WriteByte(' ')
	}
}

// value writes v at indentation ind; inline means the line is already started (after
// "- "). It reports false when v needs the fallback.
func (e *yamlEmitter) value(v any, ind int, inline bool) bool {
	switch t := v.(type) {
	case map[string]any:
		if len(t) == 0 {
			e.buf.WriteString("{}\n")
			return true
		}
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys) // yaml.v2's order for letters-only keys, checked below
		for i, k := range keys {
			if !lettersOnly(k) {
				return false
			}
			if i > 0 || !inline {
				e.indent(ind)
			}
			e.buf.WriteString(k)
			e.buf.WriteByte(':')
			switch c := t[k].(type) {
			case map[string]any:
				if len(c) == 0 {
					e.buf.WriteString(" {}\n")
					continue
				}
				e.buf.WriteByte('\n')
				if !e.value(c, ind+2, false) {
					return false
				}
			case []any:
				if len(c) == 0 {
					e.buf.WriteString(" []\n")
					continue
				}
				e.buf.WriteByte('\n')
				if !e.value(c, ind, false) {
					return false
				}
			default:
				e.buf.WriteByte(' ')
				if !e.value(c, ind, true) {
					return false
				}
			}
		}
		return true
	case []any:
		if len(t) == 0 {
			e.buf.WriteString("[]\n")
			return true
		}
		for i, item := range t {
			if i > 0 || !inline {
				e.indent(ind)
			}
			if _, nested := item.([]any); nested {
				return false
			}
			e.buf.WriteString("- ")
			if !e.value(item, ind+2, true) {
				return false
			}
		}
		return true
	case string:
		s, ok := e.scalar(t)
		if !ok {
			return false
		}
		e.buf.WriteString(s)
	case json.Number:
		e.buf.WriteString(t.String())
	case bool:
		if t {
			e.buf.WriteString("true")
		} else {
			e.buf.WriteString("false")
		}
	case nil:
		e.buf.WriteString("null")
	default:
		return false
	}
	e.buf.WriteByte('\n')
	return true
}

// scalar renders a string as yaml.v2 does in block context: plain when that reads back
// as the same string, else, for printable ASCII without spaces, yaml.v2's own rendering
// of the string alone, which does not depend on the place.
func (e *yamlEmitter) scalar(s string) (string, bool) {
	if plainString(s) {
		return s, true
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			// spaces, breaks and non-ASCII: yaml.v2 may fold or break the scalar
			// depending on the column; fall back
			return "", false
		}
	}
	if q, ok := e.quoted[s]; ok {
		return q, q != ""
	}
	out, err := yaml.Marshal(s)
	q := strings.TrimSuffix(string(out), "\n")
	if err != nil || strings.Contains(q, "\n") {
		q = "" // several lines: their indentation depends on the place; fall back
	}
	e.quoted[s] = q
	return q, q != ""
}

// plainString reports strings that yaml.v2 certainly writes plain: a letter, '/' or '_'
// first (nothing yaml.v2 resolves to a number, timestamp or merge key starts so), then
// only [A-Za-z0-9/_.=+-] and ':' not at the end, and not one of YAML 1.1's bool and null
// words.
func plainString(s string) bool {
	if s == "" {
		return false
	}
	if c := s[0]; !isLetter(c) && c != '/' && c != '_' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && strings.IndexByte("/_.=+-:", c) < 0 {
			return false
		}
	}
	if s[len(s)-1] == ':' {
		return false
	}
	switch s {
	case "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE",
		"on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL":
		return false
	}
	return true
}

func lettersOnly(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isLetter(s[i]) {
			return false
		}
	}
	return true
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
