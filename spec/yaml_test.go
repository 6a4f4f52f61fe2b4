package spec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"unicode/utf8"

	"sigs.k8s.io/yaml"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"
)

func fuzzSpec(s string, n int64) *cdispecs.Spec {
	fm := cdispecs.DeviceNode{Path: "/dev/" + s, Major: n, Minor: -n, Type: "c", Permissions: s}
	return &cdispecs.Spec{Version: s, Kind: "nvidia.com/" + s, Annotations: map[string]string{"b": "", "a": s},
		ContainerEdits: cdispecs.ContainerEdits{Env: []string{s, s + "=" + s}, DeviceNodes: []*cdispecs.DeviceNode{&fm},
			Hooks: []*cdispecs.Hook{{HookName: "createContainer", Path: s, Args: []string{s, "--link", s + "::" + s}}}},
		Devices: []cdispecs.Device{{Name: s, ContainerEdits: cdispecs.ContainerEdits{Mounts: []*cdispecs.Mount{{HostPath: s, ContainerPath: s, Options: []string{s, "ro"}}}}}, {Name: "all"}}}
}

// FuzzMarshalYAML: nvbind's YAML encoder writes exactly what sigs.k8s.io/yaml writes,
// whatever the strings and numbers, and what it writes reads back (as the CDI library
// reads specs) to the same spec, also where sigs.k8s.io/yaml gives up (it re-parses its
// own JSON, and its parser refuses control characters).
func FuzzMarshalYAML(f *testing.F) {
	for _, s := range []string{"0", "0:1", "0.5.0", "yes", "no", "on", "~", "null", "1e3", "0x1F", "-", "- a", "a: b", "#x", "'q'", `"q"`,
		"\n", "a\tb", " lead", "trail ", "a:b", "a:", "-a", "--link", "a=b", "_x", "/a/b", "Yes", "ON", "x.y.z", "gpu0", "0:0", "+1", "-1", ".5", "1_0", "0b1", "0o7", "12:30:00", "2001-12-14", ".inf", "é", "\x00", "\u2028", "!tag", "&a", "*a", "%", "@", "`", "|", ">", "?", "{}", "[]"} {
		f.Add(s, int64(195))
	}
	f.Fuzz(func(t *testing.T, s string, n int64) {
		sp := fuzzSpec(s, n)
		got, err := marshalYAML(sp)
		if err != nil {
			t.Fatal(err)
		}
		var back cdispecs.Spec
		if err := yaml.UnmarshalStrict(got, &back); err != nil {
			t.Fatalf("for %q: %v\n%s", s, err, got)
		}
		// compared as JSON, the form both encoders start from (invalid UTF-8 becomes U+FFFD)
		if a, b := asJSON(t, &back), asJSON(t, sp); !reflect.DeepEqual(a, b) {
			t.Fatalf("for %q: read back\n%v\nwant\n%v", s, a, b)
		}
		if want, err := yaml.Marshal(sp); err == nil && !bytes.Equal(got, want) {
			t.Fatalf("for %q:\n got:\n%s\nwant:\n%s", s, got, want)
		}
		checkSpecTree(t, sp)
	})
}

// checkSpecTree: specTree gives what the round trip through encoding/json gives, or
// declines, which only a string that is not valid UTF-8 may make it do.
func checkSpecTree(t *testing.T, sp *cdispecs.Spec) {
	t.Helper()
	data, err := json.Marshal(sp)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var want any
	if err := dec.Decode(&want); err != nil {
		t.Fatal(err)
	}
	got, ok := specTree(sp)
	if !ok {
		if utf8.Valid(data) && !bytes.Contains(data, []byte(`\ufffd`)) && !bytes.ContainsRune(data, utf8.RuneError) {
			t.Fatalf("specTree declined a spec with valid UTF-8 only:\n%s", data)
		}
		return
	}
	if !reflect.DeepEqual(any(got), want) {
		t.Fatalf("specTree differs from encoding/json's round trip:\n got %#v\nwant %#v", got, want)
	}
}

// TestSpecTree: every field of the specs-go types, empty, set, and set to what
// omitempty drops, reaches specTree's tree as encoding/json writes it. A field that
// specs-go adds fails here until specTree writes it.
func TestSpecTree(t *testing.T) {
	checkSpecTree(t, &cdispecs.Spec{})
	checkSpecTree(t, &cdispecs.Spec{Devices: []cdispecs.Device{}, Annotations: map[string]string{}})
	for seed := range 3 {
		var sp cdispecs.Spec
		fillValue(reflect.ValueOf(&sp).Elem(), seed, 0)
		checkSpecTree(t, &sp)
		if seed > 0 && !reflect.DeepEqual(sp, cdispecs.Spec{}) {
			// every field set: the tree has as many leaves as the JSON has
			data, _ := json.Marshal(&sp)
			if bytes.Contains(data, []byte("{}")) {
				t.Fatalf("seed %d left an empty object: %s", seed, data)
			}
		}
	}
	// nil elements of the pointer lists are null
	checkSpecTree(t, &cdispecs.Spec{ContainerEdits: cdispecs.ContainerEdits{DeviceNodes: []*cdispecs.DeviceNode{nil},
		Hooks: []*cdispecs.Hook{nil}, Mounts: []*cdispecs.Mount{nil}, NetDevices: []*cdispecs.LinuxNetDevice{nil}}})
	// invalid UTF-8 declines (encoding/json rewrites it)
	if _, ok := specTree(&cdispecs.Spec{Kind: "a\xffb"}); ok {
		t.Fatal("specTree took a string that is not UTF-8")
	}
}

// fillValue sets every field under v: seed 0 leaves everything zero, seed 1 sets values
// omitempty keeps (non-empty strings, non-zero numbers, true, one-element lists and
// maps), seed 2 sets them too with other values and two elements.
func fillValue(v reflect.Value, seed, depth int) {
	if seed == 0 || depth > 8 {
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(fmt.Sprintf("s%d-%d", seed, depth))
	case reflect.Int, reflect.Int64, reflect.Int32:
		v.SetInt(int64(-seed * 7))
	case reflect.Uint32, reflect.Uint64, reflect.Uint:
		v.SetUint(uint64(seed*5 + depth))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fillValue(v.Elem(), seed, depth+1)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), seed, seed)
		for i := range seed {
			fillValue(s.Index(i), seed, depth+1)
		}
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		for i := range seed {
			k := reflect.New(v.Type().Key()).Elem()
			k.SetString(fmt.Sprintf("key%c", 'a'+i))
			e := reflect.New(v.Type().Elem()).Elem()
			fillValue(e, seed, depth+1)
			m.SetMapIndex(k, e)
		}
		v.Set(m)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fillValue(v.Field(i), seed, depth+1)
			}
		}
	default:
		panic("fillValue: a field of kind " + v.Kind().String() + " specTree's test does not know")
	}
}

func asJSON(t *testing.T, v any) any {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func BenchmarkMarshalYAML(b *testing.B) {
	inv := discoverRoot(b, "debian-535")
	s, err := Generate(inv, Options{HookPath: hookPath})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("nvbind", func(b *testing.B) {
		for b.Loop() {
			if _, err := marshalYAML(s); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sigs.k8s.io-yaml", func(b *testing.B) {
		for b.Loop() {
			if _, err := yaml.Marshal(s); err != nil {
				b.Fatal(err)
			}
		}
	})
}
