// Checks of the security settings (the chart's `auth` and `tls` values): every file Sluice's
// TOML names is served by a mounted Secret, Secret files are readable by their owner and group
// only, probes and the preStop hook speak what the admin port speaks, masters and workers dial
// each other the way the other serves, and a cert-manager Certificate writes the Secret the
// pods mount and names every address a peer or client dials.

package main

import (
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// certificate is the part of cert-manager's Certificate (cert-manager.io/v1) the chart may
// render. It is not a core type: decoding it strictly into this struct refuses any field the
// chart is not known to write, and a misspelled one.
type certificate struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            certificateSpec   `json:"spec"`
}

type certificateSpec struct {
	SecretName     string                 `json:"secretName"`
	SecretTemplate *certificateSecretMeta `json:"secretTemplate,omitempty"`
	CommonName     string                 `json:"commonName,omitempty"`
	DNSNames       []string               `json:"dnsNames,omitempty"`
	IPAddresses    []string               `json:"ipAddresses,omitempty"`
	Duration       *metav1.Duration       `json:"duration,omitempty"`
	RenewBefore    *metav1.Duration       `json:"renewBefore,omitempty"`
	PrivateKey     *certificatePrivateKey `json:"privateKey,omitempty"`
	Usages         []string               `json:"usages,omitempty"`
	IssuerRef      certificateIssuerRef   `json:"issuerRef"`
	IsCA           bool                   `json:"isCA,omitempty"`
}

type certificateSecretMeta struct {
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type certificatePrivateKey struct {
	Algorithm      string `json:"algorithm,omitempty"`
	Size           int    `json:"size,omitempty"`
	Encoding       string `json:"encoding,omitempty"`
	RotationPolicy string `json:"rotationPolicy,omitempty"`
}

type certificateIssuerRef struct {
	Name  string `json:"name"`
	Kind  string `json:"kind,omitempty"`
	Group string `json:"group,omitempty"`
}

// The keys of a kubernetes.io/tls Secret as cert-manager writes it.
var certificateKeys = map[string]bool{"tls.crt": true, "tls.key": true, "ca.crt": true}

// The usages cert-manager knows (cert-manager.io/v1 KeyUsage).
var certificateUsages = map[string]bool{
	"signing": true, "digital signature": true, "content commitment": true, "key encipherment": true,
	"key agreement": true, "data encipherment": true, "cert sign": true, "crl sign": true,
	"encipher only": true, "decipher only": true, "any": true, "server auth": true,
	"client auth": true, "code signing": true, "email protection": true, "s/mime": true,
	"ipsec end system": true, "ipsec tunnel": true, "ipsec user": true, "timestamping": true,
	"ocsp signing": true, "microsoft sgc": true, "netscape sgc": true,
}

// secretFileKeys are the TOML keys naming a file that must come from a Secret.
var secretFileKeys = []string{"cluster_secret_file", "tls_cert_file", "tls_key_file", "tls_ca_file"}

// role is one Sluice role as rendered: its StatefulSet, its main container and its TOML.
type role struct {
	name      string
	set       *appsv1.StatefulSet
	container *corev1.Container
	table     map[string]any
}

func (r *role) text(key string) string {
	s, _ := r.table[key].(string)
	return s
}

func (r *role) flag(key string) bool {
	b, _ := r.table[key].(bool)
	return b
}

// servesTLS says whether any port of the role has TLS on.
func (r *role) servesTLS() bool {
	return r.flag("tls_grpc") || r.flag("tls_push") || r.flag("tls_fetch") || r.flag("tls_admin")
}

// checkSecurity runs the security checks over the decoded objects.
func checkSecurity(objects []object, p *problems) {
	secrets := map[string]*corev1.Secret{}
	var certificates []*certificate
	services := map[string]*corev1.Service{}
	for _, o := range objects {
		switch obj := o.obj.(type) {
		case *corev1.Secret:
			secrets[obj.Name] = obj
		case *certificate:
			certificates = append(certificates, obj)
		case *corev1.Service:
			services[obj.Name] = obj
		}
	}
	for _, s := range secrets {
		checkSecret("Secret/"+s.Name, s, p)
	}
	for _, c := range certificates {
		checkCertificate("Certificate/"+c.Metadata.Name, c, p)
	}
	roles := sluiceRoles(objects)
	if roles["master"] == nil || roles["worker"] == nil {
		if len(certificates) > 0 {
			p.add("security", "a Certificate is rendered without a master and a worker to use it")
		}
		return // checkSluice reports the missing roles
	}
	tlsSecrets := map[string]bool{}
	clusterSecrets := map[string]string{}
	for _, r := range []*role{roles["master"], roles["worker"]} {
		mounted := checkSecretFiles(r, secrets, certificates, p)
		if name := mounted["tls_cert_file"]; name != "" {
			tlsSecrets[name] = true
		}
		if key := mounted["cluster_secret_key"]; key != "" {
			clusterSecrets[mounted["cluster_secret_file"]] = key
		}
		checkServing(r, p)
		checkAdminTLS(r, p)
	}
	for name, key := range clusterSecrets {
		checkClusterSecret("Secret/"+name, secrets[name], key, p)
	}
	checkPeers(roles["master"], roles["worker"], p)
	for _, c := range certificates {
		where := "Certificate/" + c.Metadata.Name
		if !tlsSecrets[c.Spec.SecretName] {
			p.add(where, "writes Secret %q, which no master or worker mounts for tls_cert_file (they mount %v)", c.Spec.SecretName, keysOf(tlsSecrets))
		}
		checkCoverage(where, c, roles["master"], roles["worker"], services, p)
	}
}

// sluiceRoles finds the master and worker StatefulSets and their TOML files.
func sluiceRoles(objects []object) map[string]*role {
	roles := map[string]*role{}
	tables := map[string]map[string]any{}
	for _, o := range objects {
		switch obj := o.obj.(type) {
		case *appsv1.StatefulSet:
			for i := range obj.Spec.Template.Spec.Containers {
				c := &obj.Spec.Template.Spec.Containers[i]
				for _, name := range []string{"master", "worker"} {
					if contains(c.Args, name) && roles[name] == nil {
						roles[name] = &role{name: name, set: obj, container: c}
					}
				}
			}
		case *corev1.ConfigMap:
			for _, name := range []string{"master", "worker"} {
				if table := parseToml(obj.Data[name+".toml"]); table != nil {
					tables[name] = table
				}
			}
		}
	}
	for name, r := range roles {
		if tables[name] == nil {
			delete(roles, name)
		} else {
			r.table = tables[name]
		}
	}
	return roles
}

// checkSecret checks a rendered Secret: it holds data under valid keys (the decoder checked
// the base64).
func checkSecret(where string, s *corev1.Secret, p *problems) {
	if len(s.Data)+len(s.StringData) == 0 {
		p.add(where, "holds no data")
	}
	for key := range s.Data {
		for _, e := range validation.IsConfigMapKey(key) {
			p.add(where, "key %q: %s", key, e)
		}
	}
}

// checkClusterSecret checks a rendered Secret serving the cluster secret file: every line
// holds a secret of 32 bytes or more, and the Secret outlives an uninstall (losing it would
// lock the workers out of a reinstalled release's masters until every pod restarted).
func checkClusterSecret(where string, s *corev1.Secret, key string, p *problems) {
	value, ok := s.Data[key]
	if !ok {
		value = []byte(s.StringData[key])
	}
	lines := 0
	for i, line := range strings.Split(string(value), "\n") {
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		lines++
		if len(line) < 32 {
			p.add(where, "key %q line %d: a cluster secret of %d bytes, fewer than 32", key, i+1, len(line))
		}
	}
	if lines == 0 {
		p.add(where, "key %q holds no cluster secret", key)
	}
	if s.Annotations["helm.sh/resource-policy"] != "keep" {
		p.add(where, "holds the cluster secret without the annotation helm.sh/resource-policy: keep")
	}
}

// checkCertificate checks what cert-manager would refuse or what would not serve Sluice.
func checkCertificate(where string, c *certificate, p *problems) {
	if c.APIVersion != "cert-manager.io/v1" {
		p.add(where, "apiVersion %q", c.APIVersion)
	}
	for _, e := range validation.IsDNS1123Subdomain(c.Spec.SecretName) {
		p.add(where, "secretName %q: %s", c.Spec.SecretName, e)
	}
	if c.Spec.IssuerRef.Name == "" {
		p.add(where, "issuerRef.name is empty")
	}
	if len(c.Spec.DNSNames) == 0 && len(c.Spec.IPAddresses) == 0 && c.Spec.CommonName == "" {
		p.add(where, "names nothing (dnsNames, ipAddresses, commonName)")
	}
	seen := map[string]bool{}
	for _, name := range c.Spec.DNSNames {
		if seen[name] {
			p.add(where, "dnsName %q listed twice", name)
		}
		seen[name] = true
		check := strings.TrimPrefix(name, "*.")
		for _, e := range validation.IsDNS1123Subdomain(check) {
			p.add(where, "dnsName %q: %s", name, e)
		}
		if strings.Contains(check, "*") {
			p.add(where, "dnsName %q: a wildcard is only the whole leftmost label", name)
		}
	}
	if c.Spec.Duration != nil && c.Spec.RenewBefore != nil && c.Spec.RenewBefore.Duration >= c.Spec.Duration.Duration {
		p.add(where, "renewBefore %s is not shorter than duration %s", c.Spec.RenewBefore.Duration, c.Spec.Duration.Duration)
	}
	if c.Spec.IsCA {
		p.add(where, "isCA: a server certificate must not be a CA")
	}
	for _, usage := range c.Spec.Usages {
		if !certificateUsages[usage] {
			p.add(where, "usage %q is not a cert-manager usage", usage)
		}
	}
	if len(c.Spec.Usages) > 0 && !contains(c.Spec.Usages, "server auth") && !contains(c.Spec.Usages, "any") {
		p.add(where, "usages %v leave out \"server auth\": TLS servers would be refused", c.Spec.Usages)
	}
	if k := c.Spec.PrivateKey; k != nil {
		switch k.Algorithm {
		case "", "RSA", "ECDSA", "Ed25519":
		default:
			p.add(where, "privateKey.algorithm %q", k.Algorithm)
		}
		switch k.Encoding {
		case "", "PKCS1", "PKCS8":
		default:
			p.add(where, "privateKey.encoding %q", k.Encoding)
		}
		switch k.RotationPolicy {
		case "", "Never", "Always":
		default:
			p.add(where, "privateKey.rotationPolicy %q", k.RotationPolicy)
		}
	}
}

// checkSecretFiles checks that every file the role's TOML names (the cluster secret, the
// certificate, key and CA) is a key of a Secret volume mounted read-only into the container,
// readable by owner and group only, and present in the Secret when the chart renders it.
// Returns, for each key, the Secret serving it, and as "cluster_secret_key" the key of a
// rendered Secret holding the cluster secret.
func checkSecretFiles(r *role, secrets map[string]*corev1.Secret, certificates []*certificate, p *problems) map[string]string {
	where := "StatefulSet/" + r.set.Name + " container " + r.container.Name
	volumes := map[string]*corev1.Volume{}
	for i := range r.set.Spec.Template.Spec.Volumes {
		v := &r.set.Spec.Template.Spec.Volumes[i]
		volumes[v.Name] = v
	}
	served := map[string]string{}
	for _, key := range secretFileKeys {
		file := r.text(key)
		if file == "" {
			continue
		}
		if !isAbsClean(file) {
			p.add(where, "%s.toml %s = %q: not an absolute, clean path", r.name, key, file)
			continue
		}
		mount := deepestMount(r.container.VolumeMounts, file)
		if mount == nil {
			p.add(where, "%s.toml %s = %q: no volume is mounted there", r.name, key, file)
			continue
		}
		v := volumes[mount.Name]
		if v == nil || v.Secret == nil {
			p.add(where, "%s.toml %s = %q: mounted from %q, not a Secret", r.name, key, file, mount.Name)
			continue
		}
		if !mount.ReadOnly {
			p.add(where, "Secret volume %q is not mounted read-only", mount.Name)
		}
		if mount.SubPath != "" || mount.SubPathExpr != "" {
			p.add(where, "Secret volume %q is mounted with a subPath: the kubelet's updates (a rotation) would not reach it", mount.Name)
		}
		rel := strings.TrimPrefix(file, strings.TrimSuffix(mount.MountPath, "/")+"/")
		secretKey, mode := rel, v.Secret.DefaultMode
		if len(v.Secret.Items) > 0 {
			secretKey = ""
			for _, item := range v.Secret.Items {
				if item.Path == rel {
					secretKey = item.Key
					if item.Mode != nil {
						mode = item.Mode
					}
				}
			}
			if secretKey == "" {
				p.add(where, "%s.toml %s = %q: Secret volume %q has no item at %s", r.name, key, file, mount.Name, rel)
				continue
			}
		}
		if mode == nil || *mode&0o037 != 0 {
			shown := "unset (0644)"
			if mode != nil {
				shown = fmt.Sprintf("%#o", *mode)
			}
			p.add(where, "%s.toml %s = %q: file mode %s lets others than the owner and the group read or write it", r.name, key, file, shown)
		}
		name := v.Secret.SecretName
		served[key] = name
		if s := secrets[name]; s != nil {
			_, inData := s.Data[secretKey]
			_, inStringData := s.StringData[secretKey]
			if !inData && !inStringData {
				p.add(where, "%s.toml %s: Secret %q has no key %q", r.name, key, name, secretKey)
			} else if key == "cluster_secret_file" {
				served["cluster_secret_key"] = secretKey
			}
		}
		for _, c := range certificates {
			if c.Spec.SecretName == name && !certificateKeys[secretKey] {
				p.add(where, "%s.toml %s: Secret %q is written by Certificate %q, which has no key %q (only tls.crt, tls.key, ca.crt)", r.name, key, name, c.Metadata.Name, secretKey)
			}
		}
	}
	if served["tls_cert_file"] != served["tls_key_file"] {
		p.add(where, "tls_cert_file and tls_key_file come from different Secrets (%q, %q)", served["tls_cert_file"], served["tls_key_file"])
	}
	return served
}

// deepestMount is the mount holding file (the one with the longest path), or nil.
func deepestMount(mounts []corev1.VolumeMount, file string) *corev1.VolumeMount {
	var best *corev1.VolumeMount
	for i := range mounts {
		m := &mounts[i]
		dir := strings.TrimSuffix(m.MountPath, "/") + "/"
		if strings.HasPrefix(file, dir) && (best == nil || len(m.MountPath) > len(best.MountPath)) {
			best = m
		}
	}
	return best
}

// checkServing checks the role's TLS keys go together: a port with TLS on needs a certificate
// and a key, dialing with TLS needs the CAs.
func checkServing(r *role, p *problems) {
	where := r.name + ".toml"
	if r.servesTLS() && (r.text("tls_cert_file") == "" || r.text("tls_key_file") == "") {
		p.add(where, "a port has TLS on without tls_cert_file and tls_key_file")
	}
	if r.flag("tls_connect") && r.text("tls_ca_file") == "" {
		p.add(where, "tls_connect without tls_ca_file")
	}
}

// checkAdminTLS checks that the probes use HTTPS exactly when the admin port does, and that a
// preStop `sluice admin` carries the cluster secret and the CA the admin port needs.
func checkAdminTLS(r *role, p *problems) {
	where := "StatefulSet/" + r.set.Name + " container " + r.container.Name
	want := corev1.URISchemeHTTP
	if r.flag("tls_admin") {
		want = corev1.URISchemeHTTPS
	}
	adminPort := map[string]bool{"admin": true}
	for _, port := range r.container.Ports {
		if port.Name == "admin" {
			adminPort[fmt.Sprint(port.ContainerPort)] = true
		}
	}
	for what, probe := range map[string]*corev1.Probe{"startupProbe": r.container.StartupProbe, "readinessProbe": r.container.ReadinessProbe, "livenessProbe": r.container.LivenessProbe} {
		if probe == nil || probe.HTTPGet == nil || !adminPort[probe.HTTPGet.Port.String()] {
			continue
		}
		got := probe.HTTPGet.Scheme
		if got == "" {
			got = corev1.URISchemeHTTP
		}
		if got != want {
			p.add(where, "%s uses %s on the admin port, which serves %s (tls_admin = %v)", what, got, want, r.flag("tls_admin"))
		}
	}
	if r.container.Lifecycle == nil || r.container.Lifecycle.PreStop == nil || r.container.Lifecycle.PreStop.Exec == nil {
		return
	}
	command := r.container.Lifecycle.PreStop.Exec.Command
	if !contains(command, "admin") {
		return
	}
	flagValue := func(name string) (string, bool) {
		for i, arg := range command {
			if arg == name && i+1 < len(command) {
				return command[i+1], true
			}
			if value, ok := strings.CutPrefix(arg, name+"="); ok {
				return value, true
			}
		}
		return "", false
	}
	env := map[string]bool{}
	for _, e := range r.container.Env {
		env[e.Name] = true
	}
	if file := r.text("cluster_secret_file"); file != "" {
		if got, ok := flagValue("--cluster-secret-file"); !ok && !env["SLUICE_ADMIN_CLUSTER_SECRET_FILE"] {
			p.add(where, "preStop runs `sluice admin` without --cluster-secret-file: the worker refuses an unsigned decommission")
		} else if ok && got != file {
			p.add(where, "preStop --cluster-secret-file %s, the worker reads %s", got, file)
		}
	}
	if r.flag("tls_admin") {
		ca := r.text("tls_ca_file")
		if got, ok := flagValue("--tls-ca-file"); !ok && !env["SLUICE_ADMIN_TLS_CA_FILE"] {
			p.add(where, "preStop runs `sluice admin` without --tls-ca-file against an HTTPS admin port")
		} else if ok && ca != "" && got != ca {
			p.add(where, "preStop --tls-ca-file %s, the worker's CA file is %s", got, ca)
		}
		// The hook dials 127.0.0.1, which a certificate of stable names does not hold.
		if _, ok := flagValue("--tls-server-name"); !ok && !env["SLUICE_ADMIN_TLS_SERVER_NAME"] {
			p.add(where, "preStop dials the admin port at 127.0.0.1 over HTTPS without a server name (--tls-server-name or SLUICE_ADMIN_TLS_SERVER_NAME)")
		}
	}
}

// checkPeers checks that each side dials the other the way the other serves: masters dial
// workers' push ports and other masters with tls_connect, workers dial masters and other
// workers' push ports with theirs; both hold the cluster secret or neither does.
func checkPeers(master, worker *role, p *problems) {
	if master.flag("tls_connect") != worker.flag("tls_push") {
		p.add("security", "master.toml tls_connect = %v, worker.toml tls_push = %v: masters dial workers' push ports", master.flag("tls_connect"), worker.flag("tls_push"))
	}
	if master.flag("tls_connect") != master.flag("tls_grpc") {
		p.add("security", "master.toml tls_connect = %v, tls_grpc = %v: masters dial each other's gRPC ports", master.flag("tls_connect"), master.flag("tls_grpc"))
	}
	if worker.flag("tls_connect") != master.flag("tls_grpc") {
		p.add("security", "worker.toml tls_connect = %v, master.toml tls_grpc = %v: workers dial the masters", worker.flag("tls_connect"), master.flag("tls_grpc"))
	}
	if worker.flag("tls_connect") != worker.flag("tls_push") {
		p.add("security", "worker.toml tls_connect = %v, tls_push = %v: workers replicate to each other's push ports", worker.flag("tls_connect"), worker.flag("tls_push"))
	}
	if (master.text("cluster_secret_file") == "") != (worker.text("cluster_secret_file") == "") {
		p.add("security", "only one of master.toml and worker.toml sets cluster_secret_file: both hold the cluster secret, or neither")
	}
	if master.text("tls_server_name") != worker.text("tls_server_name") {
		p.add("security", "master.toml tls_server_name %q, worker.toml %q: one certificate serves both", master.text("tls_server_name"), worker.text("tls_server_name"))
	}
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// workerHosts is the host each worker pod registers (SLUICE_WORKER_HOST, its references to
// variables filled from the pod's name), one per replica.
func workerHosts(worker *role) []string {
	replicas := int32(1)
	if worker.set.Spec.Replicas != nil {
		replicas = *worker.set.Spec.Replicas
	}
	var hosts []string
	for i := int32(0); i < replicas; i++ {
		pod := fmt.Sprintf("%s-%d", worker.set.Name, i)
		values := map[string]string{}
		for _, e := range worker.container.Env {
			value := e.Value
			if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name" {
				value = pod
			}
			values[e.Name] = envRef.ReplaceAllStringFunc(value, func(ref string) string {
				return values[ref[2:len(ref)-1]]
			})
		}
		host := values["SLUICE_WORKER_HOST"]
		if host == "" {
			host = worker.text("host")
		}
		if host != "" {
			hosts = append(hosts, host)
		}
	}
	return hosts
}

// checkCoverage checks that the certificate names what peers and clients dial: with
// tls_server_name, that one name; else every master as the peers and the workers name it,
// every worker as it registers itself, and the client Services.
func checkCoverage(where string, c *certificate, master, worker *role, services map[string]*corev1.Service, p *problems) {
	if name := master.text("tls_server_name"); name != "" {
		if !covers(c.Spec.DNSNames, name) {
			p.add(where, "dnsNames do not hold tls_server_name %q", name)
		}
		return
	}
	need := map[string]string{}
	hostOf := func(endpoint string) string {
		host, _, _ := strings.Cut(strings.TrimSpace(endpoint), ":")
		return host
	}
	for _, e := range listOf(master.table["peers"]) {
		need[hostOf(e)] = "a master peer"
	}
	if advertise := master.text("advertise"); advertise != "" {
		need[hostOf(advertise)] = "the master's advertised address"
	}
	for _, e := range listOf(worker.table["master"]) {
		need[hostOf(e)] = "a master the workers dial"
	}
	hosts := workerHosts(worker)
	if len(hosts) == 0 {
		p.add(where, "cannot tell the workers' hosts (no SLUICE_WORKER_HOST)")
	}
	domain := ""
	for _, h := range hosts {
		need[h] = "a worker's registered host"
		if _, after, ok := strings.Cut(h, ".svc."); ok {
			domain = after
		}
	}
	for _, s := range services {
		if s.Spec.ClusterIP == corev1.ClusterIPNone || !selectsRole(s, master.set) {
			continue
		}
		need[s.Name+"."+s.Namespace] = "the client Service"
		if domain != "" {
			need[s.Name+"."+s.Namespace+".svc."+domain] = "the client Service"
		}
	}
	names := make([]string, 0, len(need))
	for name := range need {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !covers(c.Spec.DNSNames, name) {
			p.add(where, "dnsNames do not cover %s, %s", name, need[name])
		}
	}
}

func selectsRole(s *corev1.Service, set *appsv1.StatefulSet) bool {
	ok, _ := selects(&metav1.LabelSelector{MatchLabels: s.Spec.Selector}, set.Spec.Template.Labels)
	return ok
}

// covers says whether a certificate's DNS names hold host, a wildcard standing for exactly
// one leftmost label (as TLS clients match it).
func covers(dnsNames []string, host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, name := range dnsNames {
		name = strings.ToLower(name)
		if name == host {
			return true
		}
		if suffix, ok := strings.CutPrefix(name, "*."); ok {
			if label, rest, found := strings.Cut(host, "."); found && label != "" && rest == suffix {
				return true
			}
		}
	}
	return false
}

// listOf reads a TOML list of text, or a comma-separated text.
func listOf(value any) []string {
	var out []string
	switch v := value.(type) {
	case string:
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	case []any:
		for _, s := range v {
			out = append(out, fmt.Sprint(s))
		}
	}
	return out
}

func keysOf(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// isAbsClean says whether a path is absolute and clean (no "..", no doubled slashes).
func isAbsClean(file string) bool {
	return path.IsAbs(file) && path.Clean(file) == file
}

// parseToml parses a TOML file's text; nil when empty or not TOML (checkConfigMap reports it).
func parseToml(text string) map[string]any {
	if text == "" {
		return nil
	}
	var table map[string]any
	if toml.Unmarshal([]byte(text), &table) != nil {
		return nil
	}
	return table
}
