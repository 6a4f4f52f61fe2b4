package wrapper

import (
	"bytes"
	"encoding/json"
	"fmt"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/nvbind/nvbind/request"
	"github.com/nvbind/nvbind/spec"
)

// applyEdits applies the edits to a config.json with the CDI library, as a CDI-aware
// runtime applies a spec's edits. changed is false when the container already has every
// node and mount of the edits (a runtime injected them from nvbind's CDI spec). A field
// config.json has that this build's OCI types lack is an error: rewriting the file would
// drop it. A mark other than "" is set as request.AnnotationRuntimeSteps (the service runs the
// steps); else that annotation is removed.
func applyEdits(data []byte, e spec.Edits, mark string) ([]byte, *oci.Spec, bool, error) {
	var s oci.Spec
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, nil, false, fmt.Errorf("not rewritten: %w", err)
	}
	if injected(&s, e) {
		return nil, nil, false, nil
	}
	c := e.ToCDI()
	if err := (&cdi.ContainerEdits{ContainerEdits: &c}).Apply(&s); err != nil {
		return nil, nil, false, err
	}
	if mark != "" {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[request.AnnotationRuntimeSteps] = mark
	} else {
		delete(s.Annotations, request.AnnotationRuntimeSteps)
	}
	out, err := json.Marshal(&s)
	return out, &s, err == nil, err
}

// injected reports whether the spec already has every device node and mount of the edits.
func injected(s *oci.Spec, e spec.Edits) bool {
	have := map[string]bool{}
	if s.Linux != nil {
		for _, d := range s.Linux.Devices {
			have["dev:"+d.Path] = true
		}
	}
	for _, m := range s.Mounts {
		have["mnt:"+m.Destination] = true
	}
	for _, n := range e.Nodes {
		if !have["dev:"+n.Path] {
			return false
		}
	}
	for _, m := range e.Mounts {
		if !have["mnt:"+m.Path] {
			return false
		}
	}
	return len(e.Nodes) > 0
}
