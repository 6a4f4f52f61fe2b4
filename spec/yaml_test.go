package spec

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

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
	})
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
