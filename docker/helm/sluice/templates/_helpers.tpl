{{/* Names, labels and the TOML renderer shared by the templates. */}}

{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object: the release name, followed by the chart name unless the release
name holds it already. Short enough that "<fullname>-master-headless" and the StatefulSets'
pod names stay valid DNS labels.
*/}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sluice.master" -}}{{ include "sluice.fullname" . }}-master{{- end -}}
{{- define "sluice.masterHeadless" -}}{{ include "sluice.fullname" . }}-master-headless{{- end -}}
{{- define "sluice.worker" -}}{{ include "sluice.fullname" . }}-worker{{- end -}}
{{- define "sluice.workerHeadless" -}}{{ include "sluice.fullname" . }}-worker-headless{{- end -}}
{{- define "sluice.config" -}}{{ include "sluice.fullname" . }}-config{{- end -}}

{{- define "sluice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "sluice.labels" -}}
helm.sh/chart: {{ include "sluice.chart" . }}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
{{- end -}}

{{/* Selector labels of one role: (dict "root" $ "component" "master"). */}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The DNS suffix of a headless service's pods: ".<service>.<namespace>.svc.<domain>". */}}
{{- define "sluice.podDomain" -}}
{{- printf ".%s.%s.svc.%s" .service .root.Release.Namespace .root.Values.clusterDomain -}}
{{- end -}}

{{/* Every master's gRPC endpoint, as a list (JSON, for fromJsonArray). */}}
{{- define "sluice.masterEndpoints" -}}
{{- $domain := include "sluice.podDomain" (dict "root" . "service" (include "sluice.masterHeadless" .)) -}}
{{- $list := list -}}
{{- range $i := until (int .Values.master.replicas) -}}
{{- $list = append $list (printf "%s-%d%s:%d" (include "sluice.master" $) $i $domain (int $.Values.master.ports.grpc)) -}}
{{- end -}}
{{- toJson $list -}}
{{- end -}}

{{/*
One TOML value: a string (as a basic string: JSON's escapes are TOML's), a boolean, a number
(whole numbers as integers: Helm reads every YAML number as a float, and Sluice's integer keys
refuse 10000.0), or a list of those.
*/}}
{{- define "sluice.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- ternary "true" "false" $v -}}
{{- else if kindIs "float64" $v -}}
{{- if eq $v (float64 (int64 $v)) -}}{{- int64 $v -}}{{- else -}}{{- $v -}}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "uint64" $v) -}}
{{- $v -}}
{{- else if kindIs "slice" $v -}}
{{- $items := list -}}
{{- range $v -}}{{- $items = append $items (include "sluice.tomlValue" .) -}}{{- end -}}
[{{ join ", " $items }}]
{{- else -}}
{{- fail (printf "a Sluice setting is text, a number, a boolean or a list of those, not %s: %v" (kindOf $v) $v) -}}
{{- end -}}
{{- end -}}

{{/* A flat map as TOML `key = value` lines, keys sorted; null values are left out. */}}
{{- define "sluice.toml" -}}
{{- range $key := keys . | sortAlpha }}
{{- $value := get $ $key }}
{{- if not (kindIs "invalid" $value) }}
{{ if regexMatch "^[A-Za-z0-9_-]+$" $key }}{{ $key }}{{ else }}{{ toJson $key }}{{ end }} = {{ include "sluice.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Fails when a role's config sets a key that the chart derives from other values. */}}
{{- define "sluice.refuseManaged" -}}
{{- range $key, $instead := .managed -}}
{{- if hasKey $.config $key -}}
{{- fail (printf "%s.config.%s: set by the chart from %s; set that instead" $.role $key $instead) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Pod anti-affinity over nodes for one role: (dict "root" $ "component" "worker" "mode" "soft"). */}}
{{- define "sluice.antiAffinity" -}}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "sluice.selectorLabels" . | fromYaml)) -}}
{{- if eq .mode "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - {{- toYaml $term | nindent 6 }}
{{- else if eq .mode "soft" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        {{- toYaml $term | nindent 8 }}
{{- end -}}
{{- end -}}

{{/* Pod and container security contexts. */}}
{{- define "sluice.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: {{ .Values.securityContext.seccompProfile }}
{{- end -}}

{{- define "sluice.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ .Values.securityContext.readOnlyRootFilesystem }}
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/*
Security (auth.*, tls.*). The files the pods read, each from its own Secret volume: the
cluster secret at /etc/sluice/auth/cluster-secret, the certificate, key and CA at
/etc/sluice/tls/{tls.crt,tls.key,ca.crt}.
*/}}
{{- define "sluice.authDir" -}}/etc/sluice/auth{{- end -}}
{{- define "sluice.tlsDir" -}}/etc/sluice/tls{{- end -}}
{{- define "sluice.clusterSecretFile" -}}{{ include "sluice.authDir" . }}/cluster-secret{{- end -}}

{{/* The Secret holding the cluster secret: auth.existingSecret, or the one the chart creates. */}}
{{- define "sluice.clusterSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-cluster-secret" (include "sluice.fullname" .)) -}}
{{- end -}}

{{/* The kubernetes.io/tls Secret: tls.secretName, or the one the chart's Certificate writes. */}}
{{- define "sluice.tlsSecretName" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" (include "sluice.fullname" .)) -}}
{{- end -}}

{{/* Fails on security values that do not go together. */}}
{{- define "sluice.checkSecurity" -}}
{{- $tls := .Values.tls -}}
{{- if and $tls.certManager.enabled (not $tls.enabled) -}}
{{- fail "tls.certManager.enabled: a Certificate is only rendered for tls.enabled=true; turn both on, or off" -}}
{{- end -}}
{{- if $tls.enabled -}}
{{- if and (not $tls.secretName) (not $tls.certManager.enabled) -}}
{{- fail "tls.enabled: say where the certificate comes from: tls.secretName (a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt) or tls.certManager.enabled=true with tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- if and $tls.certManager.enabled (not $tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.issuerRef.name: the Issuer or ClusterIssuer that signs the certificate is needed with tls.certManager.enabled" -}}
{{- end -}}
{{- if ne $tls.grpc $tls.push -}}
{{- fail (printf "tls.grpc=%v, tls.push=%v: masters dial workers' push ports and other masters, and workers dial masters and other workers' push ports, with one setting (tls_connect); turn both on or both off" $tls.grpc $tls.push) -}}
{{- end -}}
{{- if ne $tls.grpc $tls.fetch -}}
{{- fail (printf "tls.grpc=%v, tls.fetch=%v: a Spark client dials the masters and the workers' push and fetch ports with one setting (spark.sluice.tls.enabled); turn tls.grpc, tls.push and tls.fetch on or off together" $tls.grpc $tls.fetch) -}}
{{- end -}}
{{- if not (or $tls.grpc $tls.admin) -}}
{{- fail "tls.enabled: every port has TLS off (tls.grpc, tls.push, tls.fetch, tls.admin); turn them on, or tls.enabled off" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The DNS names of the chart's Certificate (JSON list): every master pod through its headless
service (the Raft peers, the workers' master list, the masters' redirects), every worker pod as
it registers itself (SLUICE_WORKER_HOST), the headless services, the client Service under
each name a client may use, tls.serverName and tls.certManager.extraDnsNames.
*/}}
{{- define "sluice.tlsDnsNames" -}}
{{- $ns := .Release.Namespace -}}
{{- $domain := .Values.clusterDomain -}}
{{- $client := include "sluice.master" . -}}
{{- $names := list -}}
{{- range $service := list (include "sluice.masterHeadless" .) (include "sluice.workerHeadless" .) -}}
{{- $names = append $names (printf "*.%s.%s.svc.%s" $service $ns $domain) -}}
{{- $names = append $names (printf "%s.%s.svc.%s" $service $ns $domain) -}}
{{- end -}}
{{- $names = concat $names (list $client (printf "%s.%s" $client $ns) (printf "%s.%s.svc" $client $ns) (printf "%s.%s.svc.%s" $client $ns $domain)) -}}
{{- with .Values.tls.serverName -}}
{{- $names = append $names . -}}
{{- end -}}
{{- $names = concat $names .Values.tls.certManager.extraDnsNames -}}
{{- toJson ($names | uniq) -}}
{{- end -}}

{{/*
The security settings of one role (a dict merged under the role's config):
(dict "root" $ "role" "master"). Nothing when auth and TLS are off.
*/}}
{{- define "sluice.securityConfig" -}}
{{- $values := .root.Values -}}
{{- $out := dict -}}
{{- if $values.auth.enabled -}}
{{- $_ := set $out "cluster_secret_file" (include "sluice.clusterSecretFile" .root) -}}
{{- end -}}
{{- $tls := $values.tls -}}
{{- if $tls.enabled -}}
{{- $dir := include "sluice.tlsDir" .root -}}
{{- $_ := set $out "tls_cert_file" (printf "%s/tls.crt" $dir) -}}
{{- $_ := set $out "tls_key_file" (printf "%s/tls.key" $dir) -}}
{{- $_ := set $out "tls_ca_file" (printf "%s/ca.crt" $dir) -}}
{{- $_ := set $out "tls_connect" $tls.grpc -}}
{{- $_ := set $out "tls_admin" $tls.admin -}}
{{- if eq .role "master" -}}
{{- $_ := set $out "tls_grpc" $tls.grpc -}}
{{- else -}}
{{- $_ := set $out "tls_push" $tls.push -}}
{{- $_ := set $out "tls_fetch" $tls.fetch -}}
{{- end -}}
{{- with $tls.serverName -}}
{{- $_ := set $out "tls_server_name" . -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The keys the security values manage, with the value to set instead. */}}
{{- define "sluice.securityManaged" -}}
{{- $managed := dict
      "cluster_secret_file" "auth.enabled and auth.existingSecret"
      "tls_cert_file" "tls.secretName or tls.certManager"
      "tls_key_file" "tls.secretName or tls.certManager"
      "tls_ca_file" "tls.secretName or tls.certManager"
      "tls_server_name" "tls.serverName"
      "tls_admin" "tls.admin"
      "tls_connect" "tls.grpc and tls.push" -}}
{{- if eq . "master" -}}
{{- $_ := set $managed "tls_grpc" "tls.grpc" -}}
{{- else -}}
{{- $_ := set $managed "tls_push" "tls.push" -}}
{{- $_ := set $managed "tls_fetch" "tls.fetch" -}}
{{- end -}}
{{- toJson $managed -}}
{{- end -}}

{{/* Mounts of the security Secrets (a list of VolumeMounts, empty when off). */}}
{{- define "sluice.securityMounts" -}}
{{- if .Values.auth.enabled }}
- name: cluster-secret
  mountPath: {{ include "sluice.authDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ include "sluice.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
The security Secrets as volumes. Mode 0400: the kubelet adds group read for fsGroup (65532),
the group the processes run as, and no one else reads them. Whole directories are mounted
(no subPath), so the kubelet's updates (a rotated certificate) reach the pods.
*/}}
{{- define "sluice.securityVolumes" -}}
{{- if .Values.auth.enabled }}
- name: cluster-secret
  secret:
    secretName: {{ include "sluice.clusterSecretName" . }}
    defaultMode: 0400
    items:
      - key: {{ .Values.auth.secretKey }}
        path: cluster-secret
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "sluice.tlsSecretName" . }}
    defaultMode: 0400
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{/* The scheme of the admin port's probes. */}}
{{- define "sluice.adminScheme" -}}
{{- if and .Values.tls.enabled .Values.tls.admin -}}HTTPS{{- else -}}HTTP{{- end -}}
{{- end -}}

{{/*
master.toml: the chart's settings, with `master.config` merged over them. The pods'
checksum/config annotation hashes it, so a master restarts when its own file changes only.
*/}}
{{- define "sluice.masterToml" -}}
{{- $masters := include "sluice.masterEndpoints" . | fromJsonArray -}}
{{- $masterConfig := deepCopy (.Values.master.config | default dict) -}}
{{- include "sluice.refuseManaged" (dict "role" "master" "config" $masterConfig "managed" (merge (dict
      "listen" "master.ports.grpc"
      "admin_listen" "master.ports.admin"
      "data_dir" "master.persistence") (include "sluice.securityManaged" "master" | fromJson))) -}}
{{- $masterDefaults := merge (dict
      "listen" (printf "0.0.0.0:%d" (int .Values.master.ports.grpc))
      "admin_listen" (printf "0.0.0.0:%d" (int .Values.master.ports.admin))
      "data_dir" "/var/lib/sluice/master") (include "sluice.securityConfig" (dict "root" . "role" "master") | fromJson) -}}
{{- if gt (int .Values.master.replicas) 1 -}}
{{- $_ := set $masterDefaults "peers" $masters -}}
{{- $_ := set $masterDefaults "id" "auto" -}}
{{- else -}}
{{- $_ := set $masterDefaults "advertise" (first $masters) -}}
{{- end -}}
# Sluice master settings (master/src/config.rs), rendered by the chart.
{{ include "sluice.toml" (mergeOverwrite $masterDefaults $masterConfig) | trim }}
{{ end -}}

{{/* worker.toml: the chart's settings, with `worker.config` merged over them. */}}
{{- define "sluice.workerToml" -}}
{{- $masters := include "sluice.masterEndpoints" . | fromJsonArray -}}
{{- $workerConfig := deepCopy (.Values.worker.config | default dict) -}}
{{- include "sluice.refuseManaged" (dict "role" "worker" "config" $workerConfig "managed" (merge (dict
      "push_listen" "worker.ports.push"
      "fetch_listen" "worker.ports.fetch"
      "admin_listen" "worker.ports.admin"
      "data_dirs" "worker.disks"
      "id" "the pod name"
      "host" "the pod's DNS name"
      "node" "the pod's node"
      "zone" "worker.zone") (include "sluice.securityManaged" "worker" | fromJson))) -}}
{{- $dataDirs := list -}}
{{- range .Values.worker.disks -}}
{{- $dataDirs = append $dataDirs (printf "/var/lib/sluice/%s" .name) -}}
{{- end -}}
{{- $workerDefaults := merge (dict
      "master" $masters
      "push_listen" (printf "0.0.0.0:%d" (int .Values.worker.ports.push))
      "fetch_listen" (printf "0.0.0.0:%d" (int .Values.worker.ports.fetch))
      "admin_listen" (printf "0.0.0.0:%d" (int .Values.worker.ports.admin))
      "data_dirs" $dataDirs) (include "sluice.securityConfig" (dict "root" . "role" "worker") | fromJson) -}}
# Sluice worker settings (worker/src/config.rs), rendered by the chart. The pod's
# environment sets id, host, node and zone.
{{ include "sluice.toml" (mergeOverwrite $workerDefaults $workerConfig) | trim }}
{{ end -}}
