package spec

import (
	"bytes"
	"encoding/json"
	"sort"
	"strings"

	yaml "go.yaml.in/yaml/v2"
)

// marshalYAML writes exactly what sigs.k8s.io/yaml writes for v (its JSON form in
// yaml.v2's block style, keys sorted), several times faster: the decoded JSON is
// written as YAML directly, with yaml.v2 asked only how to write scalars whose plain form
// it could read as something other than a string. A value outside the shapes of a CDI
// spec (a key that is not a letters-only JSON field name, a scalar yaml.v2 writes over
// several lines) falls back to yaml.v2 for the whole document. FuzzMarshalYAML keeps
// the two byte-equal.
func marshalYAML(v any) ([]byte, error) {
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
	e := yamlEmitter{quoted: map[string]string{}}
	if e.value(tree, 0, false) {
		return e.buf.Bytes(), nil
	}
	return yaml.Marshal(tree) // yaml.v2 orders map keys itself
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
