package testutil

import (
	"regexp"
	"slices"
	"strings"

	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"
)

// ValidateKubeYAML runs Kubernetes' own metadata validation (apimachinery's
// ValidateObjectMetaAccessor, ValidateAnnotations and ValidateLabels) on one object in
// YAML: its name, labels and annotations, and those of a pod template and the label keys
// of a node selector or label selector inside it. It returns one line per error.
func ValidateKubeYAML(data []byte) []string {
	var obj map[string]any
	if err := yaml.Unmarshal(data, &obj); err != nil {
		return []string{err.Error()}
	}
	u := &unstructured.Unstructured{Object: obj}
	if u.GetNamespace() == "" && namespaced(u.GetKind()) {
		u.SetNamespace("default") // what kubectl fills in
	}
	var errs field.ErrorList
	errs = append(errs, apivalidation.ValidateObjectMetaAccessor(u, namespaced(u.GetKind()),
		apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))...)
	errs = append(errs, nested(obj, field.NewPath(""))...)
	out := make([]string, 0, len(errs))
	for _, e := range errs {
		out = append(out, u.GetKind()+"/"+u.GetName()+": "+e.Error())
	}
	return out
}

func namespaced(kind string) bool {
	return !slices.Contains([]string{"Namespace", "Node", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "RuntimeClass"}, kind)
}

// nested validates the metadata of pod templates and the keys of selectors anywhere below
// the object's top level.
func nested(v any, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	switch t := v.(type) {
	case map[string]any:
		for k, c := range t {
			cp := p.Child(k)
			switch k {
			case "template":
				if m, ok := c.(map[string]any); ok {
					if md, ok := m["metadata"].(map[string]any); ok {
						errs = append(errs, metaMaps(md, cp.Child("metadata"))...)
					}
				}
			case "nodeSelector", "matchLabels", "selector":
				if m, ok := c.(map[string]any); ok && flat(m) {
					errs = append(errs, metav1validation.ValidateLabels(strs(m), cp)...)
				}
			}
			errs = append(errs, nested(c, cp)...)
		}
	case []any:
		for i, c := range t {
			errs = append(errs, nested(c, p.Index(i))...)
		}
	}
	return errs
}

func metaMaps(md map[string]any, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if m, ok := md["labels"].(map[string]any); ok {
		errs = append(errs, metav1validation.ValidateLabels(strs(m), p.Child("labels"))...)
	}
	if m, ok := md["annotations"].(map[string]any); ok {
		errs = append(errs, apivalidation.ValidateAnnotations(strs(m), p.Child("annotations"))...)
	}
	return errs
}

func flat(m map[string]any) bool {
	for _, v := range m {
		if _, ok := v.(string); !ok {
			return false
		}
	}
	return true
}

func strs(m map[string]any) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		s, _ := v.(string)
		out[k] = s
	}
	return out
}

// reKey finds annotation and label keys of nvbind's and the CDI and NRI conventions'
// domains in prose: README tables, help texts, comments.
var reKey = regexp.MustCompile(`[A-Za-z0-9<>_.-]*(?:nvbind\.io|cdi\.k8s\.io|noderesource\.dev)(?:/[A-Za-z0-9<>_.-]*)*`)

// AnnotationKeysIn returns the annotation and label keys that text mentions, with
// placeholders (<name>, <key>) filled in, so that each can be validated.
func AnnotationKeysIn(text string) []string {
	var keys []string
	for _, k := range reKey.FindAllString(text, -1) {
		k = strings.TrimRight(k, ".")
		k = strings.NewReplacer("<name>", "cuda", "<key>", "key", "<container>", "cuda", "<id>", "id").Replace(k)
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// InvalidKeys returns the keys Kubernetes would reject as annotation keys, each with the
// validator's reason.
func InvalidKeys(keys []string) []string {
	var bad []string
	for _, k := range keys {
		if errs := apivalidation.ValidateAnnotations(map[string]string{k: ""}, field.NewPath("metadata", "annotations")); len(errs) > 0 {
			bad = append(bad, errs.ToAggregate().Error())
		}
	}
	return bad
}
