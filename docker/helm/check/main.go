// Command check reads the output of `helm template` and checks every object in it against the
// Kubernetes API types, strictly, then checks what a type alone cannot: that selectors select,
// that ports and probes name declared ports, that volumes and ConfigMap keys exist, and that
// Sluice's TOML files parse, use only keys Sluice knows, and agree with the StatefulSets.
//
//	helm template sluice docker/helm/sluice | check [-master-keys F] [-worker-keys F] [-want KINDS] [-extract DIR]
//
// Each document is decoded into its typed object (apps/v1 StatefulSet, v1 Service, ...) with
// unknown and duplicated fields refused; a kind the checker does not know is an error. A
// cert-manager Certificate, not a core type, is decoded into a local struct of the fields the
// chart writes (security.go), as strictly. The security checks (security.go) follow the files
// of Sluice's TOML to the Secrets mounted for them and a Certificate's names to the addresses
// masters and workers are dialed at. The
// key files are the JSON a running process serves on its admin port at /api/config: its keys
// are the config keys, its values give each key's type. It prints one line per object and a
// summary, and exits 1 on any problem. With -extract it also writes each ConfigMap's TOML files
// into a directory, for a test that starts the real binary on them.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// object is one decoded document.
type object struct {
	kind string
	name string
	obj  any
}

// workload is an object with a pod template.
type workload struct {
	kind     string
	name     string
	selector *metav1.LabelSelector
	template *corev1.PodTemplateSpec
	claims   []corev1.PersistentVolumeClaim
}

// problems collects every failure, each prefixed with the object it is about.
type problems struct{ list []string }

func (p *problems) add(where, format string, args ...any) {
	p.list = append(p.list, where+": "+fmt.Sprintf(format, args...))
}

func main() {
	masterKeys := flag.String("master-keys", "", "JSON of a master's /api/config: the master's config keys")
	workerKeys := flag.String("worker-keys", "", "JSON of a worker's /api/config: the worker's config keys")
	want := flag.String("want", "", "comma-separated kinds that must appear at least once")
	extract := flag.String("extract", "", "write every ConfigMap's .toml keys into this directory")
	flag.Parse()

	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fatal("reading stdin: %v", err)
	}
	keys := map[string]map[string]any{}
	for role, file := range map[string]string{"master": *masterKeys, "worker": *workerKeys} {
		if file == "" {
			continue
		}
		keys[role], err = readKeys(file)
		if err != nil {
			fatal("%v", err)
		}
	}

	var p problems
	objects := decodeAll(input, &p)
	checkAll(objects, keys, &p)

	seen := map[string]int{}
	for _, o := range objects {
		seen[o.kind]++
	}
	for _, kind := range strings.Split(*want, ",") {
		if kind = strings.TrimSpace(kind); kind != "" && seen[kind] == 0 {
			p.add("output", "no %s rendered", kind)
		}
	}
	for _, o := range objects {
		fmt.Printf("decoded %s/%s\n", o.kind, o.name)
	}
	if *extract != "" {
		if err := extractToml(objects, *extract); err != nil {
			p.add("extract", "%v", err)
		}
	}
	for _, problem := range p.list {
		fmt.Println("FAIL " + problem)
	}
	fmt.Printf("%d objects checked, %d problems\n", len(objects), len(p.list))
	if len(p.list) > 0 || len(objects) == 0 {
		os.Exit(1)
	}
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "check: "+format+"\n", args...)
	os.Exit(2)
}

// extractToml writes the `.toml` keys of every ConfigMap into dir, under their key names.
func extractToml(objects []object, dir string) error {
	for _, o := range objects {
		cm, ok := o.obj.(*corev1.ConfigMap)
		if !ok {
			continue
		}
		for key, text := range cm.Data {
			if !strings.HasSuffix(key, ".toml") || strings.ContainsAny(key, "/\\") {
				continue
			}
			if err := os.WriteFile(path.Join(dir, key), []byte(text), 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

// readKeys reads a /api/config JSON object: key to default value.
func readKeys(file string) (map[string]any, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var keys map[string]any
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, fmt.Errorf("%s: not a JSON object: %v", file, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no keys", file)
	}
	return keys, nil
}

var separator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeAll splits a YAML stream into documents and decodes each into its API type.
func decodeAll(input []byte, p *problems) []object {
	var out []object
	for i, doc := range separator.Split(string(input), -1) {
		if isEmpty(doc) {
			continue
		}
		where := fmt.Sprintf("document %d", i)
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			p.add(where, "not YAML: %v", err)
			continue
		}
		target := newObject(meta.APIVersion, meta.Kind)
		if target == nil {
			p.add(where, "unknown kind %s %q", meta.APIVersion, meta.Kind)
			continue
		}
		if err := yaml.UnmarshalStrict([]byte(doc), target); err != nil {
			p.add(where+" ("+meta.Kind+")", "does not decode strictly as %s %s: %v", meta.APIVersion, meta.Kind, err)
			continue
		}
		name := objectMeta(target).Name
		out = append(out, object{kind: meta.Kind, name: name, obj: target})
	}
	return out
}

// isEmpty says whether a document holds nothing but comments and blank lines.
func isEmpty(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			return false
		}
	}
	return true
}

// newObject returns a pointer to the typed object of an apiVersion and kind, or nil.
func newObject(apiVersion, kind string) any {
	switch apiVersion + " " + kind {
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}
	case "apps/v1 DaemonSet":
		return &appsv1.DaemonSet{}
	case "v1 Service":
		return &corev1.Service{}
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}
	case "v1 Secret":
		return &corev1.Secret{}
	case "v1 ServiceAccount":
		return &corev1.ServiceAccount{}
	case "v1 Pod":
		return &corev1.Pod{}
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "batch/v1 Job":
		return &batchv1.Job{}
	case "networking.k8s.io/v1 NetworkPolicy":
		return &networkingv1.NetworkPolicy{}
	case "cert-manager.io/v1 Certificate":
		return &certificate{}
	}
	return nil
}

func objectMeta(obj any) *metav1.ObjectMeta {
	switch o := obj.(type) {
	case *appsv1.StatefulSet:
		return &o.ObjectMeta
	case *appsv1.Deployment:
		return &o.ObjectMeta
	case *appsv1.DaemonSet:
		return &o.ObjectMeta
	case *corev1.Service:
		return &o.ObjectMeta
	case *corev1.ConfigMap:
		return &o.ObjectMeta
	case *corev1.Secret:
		return &o.ObjectMeta
	case *corev1.ServiceAccount:
		return &o.ObjectMeta
	case *corev1.Pod:
		return &o.ObjectMeta
	case *policyv1.PodDisruptionBudget:
		return &o.ObjectMeta
	case *batchv1.Job:
		return &o.ObjectMeta
	case *networkingv1.NetworkPolicy:
		return &o.ObjectMeta
	case *certificate:
		return &o.Metadata
	}
	panic(fmt.Sprintf("no metadata accessor for %T", obj))
}

// checkAll runs every semantic check over the decoded objects.
func checkAll(objects []object, keys map[string]map[string]any, p *problems) {
	configMaps := map[string]*corev1.ConfigMap{}
	services := map[string]*corev1.Service{}
	var workloads []workload
	names := map[string]bool{}
	for _, o := range objects {
		where := o.kind + "/" + o.name
		if names[where] {
			p.add(where, "rendered twice")
		}
		names[where] = true
		checkMeta(where, objectMeta(o.obj), p)
		switch obj := o.obj.(type) {
		case *corev1.ConfigMap:
			configMaps[obj.Name] = obj
		case *corev1.Service:
			services[obj.Name] = obj
		case *appsv1.StatefulSet:
			workloads = append(workloads, workload{o.kind, o.name, obj.Spec.Selector, &obj.Spec.Template, obj.Spec.VolumeClaimTemplates})
		case *appsv1.Deployment:
			workloads = append(workloads, workload{o.kind, o.name, obj.Spec.Selector, &obj.Spec.Template, nil})
		case *appsv1.DaemonSet:
			workloads = append(workloads, workload{o.kind, o.name, obj.Spec.Selector, &obj.Spec.Template, nil})
		case *batchv1.Job:
			workloads = append(workloads, workload{o.kind, o.name, nil, &obj.Spec.Template, nil})
		}
	}
	for _, w := range workloads {
		checkWorkload(w, configMaps, keys, p)
	}
	for _, o := range objects {
		where := o.kind + "/" + o.name
		switch obj := o.obj.(type) {
		case *appsv1.StatefulSet:
			checkStatefulSet(where, obj, services, p)
		case *corev1.Service:
			checkService(where, obj, workloads, p)
		case *policyv1.PodDisruptionBudget:
			checkBudget(where, obj, workloads, p)
		case *corev1.ConfigMap:
			checkConfigMap(where, obj, keys, p)
		}
	}
	checkSluice(objects, p)
	checkSecurity(objects, p)
}

func checkMeta(where string, meta *metav1.ObjectMeta, p *problems) {
	for _, e := range validation.IsDNS1123Subdomain(meta.Name) {
		p.add(where, "name %q: %s", meta.Name, e)
	}
	for key, value := range meta.Labels {
		for _, e := range validation.IsQualifiedName(key) {
			p.add(where, "label key %q: %s", key, e)
		}
		for _, e := range validation.IsValidLabelValue(value) {
			p.add(where, "label %s value %q: %s", key, value, e)
		}
	}
}

// selects says whether a selector (nil: none) selects a set of labels.
func selects(selector *metav1.LabelSelector, set map[string]string) (bool, error) {
	if selector == nil {
		return false, nil
	}
	s, err := metav1.LabelSelectorAsSelector(selector)
	if err != nil {
		return false, err
	}
	return !s.Empty() && s.Matches(labels.Set(set)), nil
}

var envReference = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

func checkWorkload(w workload, configMaps map[string]*corev1.ConfigMap, keys map[string]map[string]any, p *problems) {
	where := w.kind + "/" + w.name
	template := w.template
	if w.kind != "Job" {
		ok, err := selects(w.selector, template.Labels)
		if err != nil {
			p.add(where, "selector: %v", err)
		} else if !ok {
			p.add(where, "selector %v does not select the pod template's labels %v", w.selector, template.Labels)
		}
	}
	for key, value := range template.Labels {
		for _, e := range validation.IsValidLabelValue(value) {
			p.add(where, "template label %s value %q: %s", key, value, e)
		}
	}
	spec := &template.Spec
	if spec.SecurityContext == nil || spec.SecurityContext.RunAsNonRoot == nil || !*spec.SecurityContext.RunAsNonRoot {
		p.add(where, "the pod does not require a non-root user (securityContext.runAsNonRoot)")
	}

	volumes := map[string]*corev1.Volume{}
	for i := range spec.Volumes {
		v := &spec.Volumes[i]
		if volumes[v.Name] != nil {
			p.add(where, "volume %q declared twice", v.Name)
		}
		volumes[v.Name] = v
		if v.ConfigMap != nil {
			cm := configMaps[v.ConfigMap.Name]
			if cm == nil {
				if v.ConfigMap.Optional == nil || !*v.ConfigMap.Optional {
					p.add(where, "volume %q: ConfigMap %q is not rendered", v.Name, v.ConfigMap.Name)
				}
				continue
			}
			for _, item := range v.ConfigMap.Items {
				if _, ok := cm.Data[item.Key]; !ok {
					p.add(where, "volume %q: ConfigMap %q has no key %q", v.Name, cm.Name, item.Key)
				}
			}
		}
	}
	claims := map[string]bool{}
	for _, c := range w.claims {
		if volumes[c.Name] != nil {
			p.add(where, "claim template %q has the name of a volume", c.Name)
		}
		claims[c.Name] = true
		if c.Spec.Resources.Requests.Storage().IsZero() {
			p.add(where, "claim template %q requests no storage", c.Name)
		}
	}
	used := map[string]bool{}

	containers := append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
	if len(spec.Containers) == 0 {
		p.add(where, "no containers")
	}
	for _, c := range containers {
		cw := where + " container " + c.Name
		for _, e := range validation.IsDNS1123Label(c.Name) {
			p.add(cw, "name: %s", e)
		}
		if c.Image == "" {
			p.add(cw, "no image")
		}
		// Ports: every one named, names and numbers unique.
		byName := map[string]int32{}
		byNumber := map[int32]bool{}
		for _, port := range c.Ports {
			if port.Name == "" {
				p.add(cw, "port %d has no name", port.ContainerPort)
			} else {
				for _, e := range validation.IsValidPortName(port.Name) {
					p.add(cw, "port name %q: %s", port.Name, e)
				}
				if _, dup := byName[port.Name]; dup {
					p.add(cw, "port name %q used twice", port.Name)
				}
				byName[port.Name] = port.ContainerPort
			}
			if byNumber[port.ContainerPort] {
				p.add(cw, "port %d declared twice", port.ContainerPort)
			}
			byNumber[port.ContainerPort] = true
		}
		declared := func(what string, port intstr.IntOrString) {
			if port.Type == intstr.String {
				if _, ok := byName[port.StrVal]; !ok {
					p.add(cw, "%s names port %q, which the container does not declare", what, port.StrVal)
				}
			} else if !byNumber[port.IntVal] {
				p.add(cw, "%s uses port %d, which the container does not declare", what, port.IntVal)
			}
		}
		probes := map[string]*corev1.Probe{"startupProbe": c.StartupProbe, "readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe}
		for what, probe := range probes {
			if probe == nil {
				continue
			}
			switch {
			case probe.HTTPGet != nil:
				declared(what, probe.HTTPGet.Port)
				if !strings.HasPrefix(probe.HTTPGet.Path, "/") {
					p.add(cw, "%s path %q is not absolute", what, probe.HTTPGet.Path)
				}
			case probe.TCPSocket != nil:
				declared(what, probe.TCPSocket.Port)
			case probe.GRPC != nil:
				declared(what, intstr.FromInt32(probe.GRPC.Port))
			case probe.Exec != nil:
				checkCommand(cw, what, probe.Exec.Command, p)
			default:
				p.add(cw, "%s has no handler", what)
			}
		}
		if len(spec.Containers) > 0 && c.Name == spec.Containers[0].Name && !isInit(spec, c.Name) {
			if c.ReadinessProbe == nil || c.LivenessProbe == nil {
				p.add(cw, "needs a readiness and a liveness probe")
			}
		}
		if c.Lifecycle != nil {
			for what, handler := range map[string]*corev1.LifecycleHandler{"preStop": c.Lifecycle.PreStop, "postStart": c.Lifecycle.PostStart} {
				switch {
				case handler == nil:
				case handler.Exec != nil:
					checkCommand(cw, what, handler.Exec.Command, p)
				case handler.HTTPGet != nil:
					declared(what, handler.HTTPGet.Port)
				case handler.TCPSocket != nil:
					declared(what, handler.TCPSocket.Port)
				case handler.Sleep != nil:
				default:
					p.add(cw, "%s has no handler", what)
				}
			}
		}
		// Security: no privilege escalation, no capabilities, read-only root.
		sc := c.SecurityContext
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			p.add(cw, "allowPrivilegeEscalation is not false")
		}
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			p.add(cw, "readOnlyRootFilesystem is not true")
		}
		if sc == nil || sc.Capabilities == nil || !contains(sc.Capabilities.Drop, "ALL") {
			p.add(cw, "capabilities do not drop ALL")
		}
		// Environment: fieldRefs the downward API serves, $(VAR) defined before use, and
		// Sluice variables naming real config keys.
		defined := map[string]bool{}
		for _, env := range c.Env {
			for _, e := range validation.IsEnvVarName(env.Name) {
				p.add(cw, "env %q: %s", env.Name, e)
			}
			for _, ref := range envReference.FindAllStringSubmatch(env.Value, -1) {
				if !defined[ref[1]] {
					p.add(cw, "env %s refers to $(%s), not defined before it", env.Name, ref[1])
				}
			}
			if env.ValueFrom != nil && env.ValueFrom.FieldRef != nil && !downwardField(env.ValueFrom.FieldRef.FieldPath) {
				p.add(cw, "env %s: fieldPath %q is not served by the downward API for env", env.Name, env.ValueFrom.FieldRef.FieldPath)
			}
			for role, prefix := range map[string]string{"master": "SLUICE_MASTER_", "worker": "SLUICE_WORKER_"} {
				if known := keys[role]; known != nil && strings.HasPrefix(env.Name, prefix) {
					key := strings.ToLower(strings.TrimPrefix(env.Name, prefix))
					if _, ok := known[key]; !ok {
						p.add(cw, "env %s: the %s has no config key %q", env.Name, role, key)
					}
				}
			}
			defined[env.Name] = true
		}
		// Mounts: of declared volumes or claim templates, at distinct absolute paths.
		paths := map[string]bool{}
		for _, m := range c.VolumeMounts {
			if volumes[m.Name] == nil && !claims[m.Name] {
				p.add(cw, "mounts %q, which is neither a volume nor a claim template", m.Name)
			}
			used[m.Name] = true
			if !path.IsAbs(m.MountPath) {
				p.add(cw, "mount path %q is not absolute", m.MountPath)
			}
			if paths[m.MountPath] {
				p.add(cw, "two volumes mounted at %s", m.MountPath)
			}
			paths[m.MountPath] = true
		}
		// `--config FILE`: FILE comes from a mounted ConfigMap key.
		args := append(append([]string{}, c.Command...), c.Args...)
		for i, arg := range args {
			if arg == "--config" && i+1 < len(args) {
				checkConfigFile(cw, args[i+1], c.VolumeMounts, volumes, configMaps, p)
			}
		}
	}
	for name := range volumes {
		if !used[name] {
			p.add(where, "volume %q is mounted by no container", name)
		}
	}
	for name := range claims {
		if !used[name] {
			p.add(where, "claim template %q is mounted by no container", name)
		}
	}
}

func isInit(spec *corev1.PodSpec, name string) bool {
	for _, c := range spec.InitContainers {
		if c.Name == name {
			return true
		}
	}
	return false
}

func contains[T comparable](list []T, want T) bool {
	for _, v := range list {
		if v == want {
			return true
		}
	}
	return false
}

// downwardField says whether a fieldRef path can fill an environment variable.
func downwardField(field string) bool {
	switch field {
	case "metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName",
		"spec.serviceAccountName", "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs":
		return true
	}
	return strings.HasPrefix(field, "metadata.labels['") || strings.HasPrefix(field, "metadata.annotations['")
}

func checkCommand(where, what string, command []string, p *problems) {
	if len(command) == 0 {
		p.add(where, "%s runs no command", what)
	} else if !path.IsAbs(command[0]) {
		p.add(where, "%s runs %q: not an absolute path (the image has no shell and no PATH search)", what, command[0])
	}
}

// checkConfigFile checks that `file` is a key of a ConfigMap mounted into the container.
func checkConfigFile(where, file string, mounts []corev1.VolumeMount, volumes map[string]*corev1.Volume, configMaps map[string]*corev1.ConfigMap, p *problems) {
	for _, m := range mounts {
		dir := strings.TrimSuffix(m.MountPath, "/") + "/"
		v := volumes[m.Name]
		if !strings.HasPrefix(file, dir) || v == nil || v.ConfigMap == nil {
			continue
		}
		rel := strings.TrimPrefix(file, dir)
		cm := configMaps[v.ConfigMap.Name]
		if cm == nil {
			return // reported with the volume
		}
		if len(v.ConfigMap.Items) == 0 {
			if _, ok := cm.Data[rel]; ok {
				return
			}
		}
		for _, item := range v.ConfigMap.Items {
			if item.Path == rel {
				return
			}
		}
		p.add(where, "--config %s: ConfigMap %q mounted at %s does not provide %s", file, cm.Name, m.MountPath, rel)
		return
	}
	p.add(where, "--config %s: no ConfigMap is mounted there", file)
}

func checkStatefulSet(where string, s *appsv1.StatefulSet, services map[string]*corev1.Service, p *problems) {
	svc := services[s.Spec.ServiceName]
	switch {
	case s.Spec.ServiceName == "":
		p.add(where, "no serviceName: its pods get no stable DNS names")
	case svc == nil:
		p.add(where, "serviceName %q is not rendered", s.Spec.ServiceName)
	case svc.Spec.ClusterIP != corev1.ClusterIPNone:
		p.add(where, "serviceName %q is not headless", s.Spec.ServiceName)
	default:
		if ok, _ := selects(&metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, s.Spec.Template.Labels); !ok {
			p.add(where, "its headless service %q does not select its pods", svc.Name)
		}
	}
}

func checkService(where string, s *corev1.Service, workloads []workload, p *problems) {
	if len(s.Spec.Selector) == 0 {
		p.add(where, "no selector")
		return
	}
	var matched []workload
	for _, w := range workloads {
		if ok, _ := selects(&metav1.LabelSelector{MatchLabels: s.Spec.Selector}, w.template.Labels); ok {
			matched = append(matched, w)
		}
	}
	if len(matched) == 0 {
		p.add(where, "selector %v selects no rendered pod template", s.Spec.Selector)
	}
	names := map[string]bool{}
	for _, port := range s.Spec.Ports {
		if len(s.Spec.Ports) > 1 && port.Name == "" {
			p.add(where, "port %d has no name", port.Port)
		}
		if names[port.Name] {
			p.add(where, "port name %q used twice", port.Name)
		}
		names[port.Name] = true
		target := port.TargetPort
		if target.Type == intstr.Int && target.IntVal == 0 {
			target = intstr.FromInt32(port.Port)
		}
		for _, w := range matched {
			if !podDeclares(w.template, target) {
				p.add(where, "port %s targets %s, which %s/%s does not declare", port.Name, target.String(), w.kind, w.name)
			}
		}
	}
}

func podDeclares(template *corev1.PodTemplateSpec, port intstr.IntOrString) bool {
	for _, c := range template.Spec.Containers {
		for _, declared := range c.Ports {
			if (port.Type == intstr.String && declared.Name == port.StrVal) ||
				(port.Type == intstr.Int && declared.ContainerPort == port.IntVal) {
				return true
			}
		}
	}
	return false
}

func checkBudget(where string, b *policyv1.PodDisruptionBudget, workloads []workload, p *problems) {
	if (b.Spec.MinAvailable == nil) == (b.Spec.MaxUnavailable == nil) {
		p.add(where, "needs exactly one of minAvailable and maxUnavailable")
	}
	found := false
	for _, w := range workloads {
		if ok, err := selects(b.Spec.Selector, w.template.Labels); err != nil {
			p.add(where, "selector: %v", err)
			return
		} else if ok {
			found = true
		}
	}
	if !found {
		p.add(where, "selects no rendered pod template")
	}
}

// checkConfigMap parses every `.toml` key and checks its keys and value types against a
// running process's configuration (master.toml: the master's, worker.toml: the worker's).
func checkConfigMap(where string, cm *corev1.ConfigMap, keys map[string]map[string]any, p *problems) {
	files := make([]string, 0, len(cm.Data))
	for file := range cm.Data {
		files = append(files, file)
	}
	sort.Strings(files)
	for _, file := range files {
		if !strings.HasSuffix(file, ".toml") {
			continue
		}
		fw := where + " " + file
		var table map[string]any
		if err := toml.Unmarshal([]byte(cm.Data[file]), &table); err != nil {
			p.add(fw, "does not parse as TOML: %v", err)
			continue
		}
		known := keys[strings.TrimSuffix(file, ".toml")]
		if known == nil {
			continue
		}
		for key, value := range table {
			def, ok := known[key]
			if !ok {
				p.add(fw, "unknown key %q", key)
				continue
			}
			if problem := typeMismatch(key, def, value); problem != "" {
				p.add(fw, "key %s: %s", key, problem)
			}
		}
	}
}

// typeMismatch compares a TOML value with the JSON default of its key ("" when they agree).
// Two text keys take more: `id` (the master's) is "auto" or a number, and `master` (the
// worker's) is a comma-separated list or a list.
func typeMismatch(key string, def, value any) string {
	switch def.(type) {
	case string:
		switch v := value.(type) {
		case string:
			return ""
		case int64:
			if key == "id" {
				return ""
			}
		case []any:
			if key == "master" && allText(v) {
				return ""
			}
		}
		return fmt.Sprintf("%v (%T) where text is expected", value, value)
	case bool:
		if _, ok := value.(bool); ok {
			return ""
		}
		return fmt.Sprintf("%v (%T) where a boolean is expected", value, value)
	case float64:
		if _, ok := value.(int64); ok {
			return ""
		}
		return fmt.Sprintf("%v (%T) where a whole number is expected", value, value)
	case []any:
		switch v := value.(type) {
		case []any:
			if allText(v) {
				return ""
			}
		case string:
			return "" // a comma-separated list
		}
		return fmt.Sprintf("%v (%T) where a list of text is expected", value, value)
	}
	return ""
}

func allText(list []any) bool {
	for _, item := range list {
		if _, ok := item.(string); !ok {
			return false
		}
	}
	return true
}

// checkSluice checks what ties Sluice's objects together: the masters' `peers` name each pod
// of the master StatefulSet through its headless service, a single master advertises its
// stable name, and the workers' `master` lists every master.
func checkSluice(objects []object, p *problems) {
	var master, worker *appsv1.StatefulSet
	tables := map[string]map[string]any{}
	namespace := ""
	for _, o := range objects {
		switch obj := o.obj.(type) {
		case *appsv1.StatefulSet:
			for _, c := range obj.Spec.Template.Spec.Containers {
				if contains(c.Args, "master") {
					master = obj
				} else if contains(c.Args, "worker") {
					worker = obj
				}
			}
		case *corev1.ConfigMap:
			for _, role := range []string{"master", "worker"} {
				var table map[string]any
				if text, ok := obj.Data[role+".toml"]; ok && toml.Unmarshal([]byte(text), &table) == nil {
					tables[role] = table
					namespace = obj.Namespace
				}
			}
		}
	}
	if master == nil && worker == nil {
		return
	}
	if master == nil || worker == nil || tables["master"] == nil || tables["worker"] == nil {
		p.add("sluice", "expected a master and a worker StatefulSet and a ConfigMap with master.toml and worker.toml")
		return
	}
	replicas := int32(1)
	if master.Spec.Replicas != nil {
		replicas = *master.Spec.Replicas
	}
	// expected[i]: "<pod>.<service>.<namespace>.svc.:<port>", the cluster domain left out.
	var expected []string
	port := containerPort(master, "grpc")
	for i := int32(0); i < replicas; i++ {
		expected = append(expected, fmt.Sprintf("%s-%d.%s.%s.svc.:%d", master.Name, i, master.Spec.ServiceName, namespace, port))
	}
	endpoints := func(value any) []string {
		var out []string
		switch v := value.(type) {
		case string:
			for _, s := range strings.Split(v, ",") {
				out = append(out, strings.TrimSpace(s))
			}
		case []any:
			for _, s := range v {
				out = append(out, fmt.Sprint(s))
			}
		}
		return out
	}
	matches := func(endpoint, want string) bool {
		// want is "<pod>.<service>.<namespace>.svc.:<port>"; the endpoint carries the cluster
		// domain between "svc." and the port.
		prefix, port, _ := strings.Cut(want, ":")
		host, got, _ := strings.Cut(endpoint, ":")
		return strings.HasPrefix(host, prefix) && got == port
	}
	if master.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		p.add("sluice", "the master StatefulSet must start its pods in parallel: a master is ready only once a majority runs")
	}
	if replicas > 1 {
		peers := endpoints(tables["master"]["peers"])
		if len(peers) != int(replicas) {
			p.add("sluice", "master.toml lists %d peers for %d masters", len(peers), replicas)
		} else {
			for i := range peers {
				if !matches(peers[i], expected[i]) {
					p.add("sluice", "master.toml peers[%d] = %q, the stable name of master %d is %s<domain>", i, peers[i], i, expected[i])
				}
			}
		}
		if id, _ := tables["master"]["id"].(string); id != "auto" {
			p.add("sluice", "master.toml id = %v: a StatefulSet's masters take their ids from their names (\"auto\")", tables["master"]["id"])
		}
	} else if advertise, _ := tables["master"]["advertise"].(string); !matches(advertise, expected[0]) {
		p.add("sluice", "master.toml advertise = %q, not the master's stable name", advertise)
	}
	masters := endpoints(tables["worker"]["master"])
	if len(masters) != int(replicas) {
		p.add("sluice", "worker.toml lists %d masters, there are %d", len(masters), replicas)
	} else {
		for i := range masters {
			if !matches(masters[i], expected[i]) {
				p.add("sluice", "worker.toml master[%d] = %q, expected %s<domain>", i, masters[i], expected[i])
			}
		}
	}
	// Every data disk mounted where worker.toml's data_dirs point.
	mounted := map[string]bool{}
	for _, c := range worker.Spec.Template.Spec.Containers {
		for _, m := range c.VolumeMounts {
			mounted[m.MountPath] = true
		}
	}
	for _, dir := range endpoints(tables["worker"]["data_dirs"]) {
		if !mounted[dir] {
			p.add("sluice", "worker.toml data dir %s is no mounted volume", dir)
		}
	}
	if dir, _ := tables["master"]["data_dir"].(string); !underMount(master, dir) {
		p.add("sluice", "master.toml data_dir %q is on no mounted volume", dir)
	}
	if worker.Spec.Template.Spec.TerminationGracePeriodSeconds == nil {
		p.add("sluice", "the worker sets no terminationGracePeriodSeconds for its drain")
	}
}

func containerPort(s *appsv1.StatefulSet, name string) int32 {
	for _, c := range s.Spec.Template.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name == name {
				return port.ContainerPort
			}
		}
	}
	return 0
}

func underMount(s *appsv1.StatefulSet, dir string) bool {
	for _, c := range s.Spec.Template.Spec.Containers {
		for _, m := range c.VolumeMounts {
			if m.Name != "config" && m.Name != "tmp" && (dir == m.MountPath || strings.HasPrefix(dir, strings.TrimSuffix(m.MountPath, "/")+"/")) {
				return true
			}
		}
	}
	return false
}
