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
master.toml: the chart's settings, with `master.config` merged over them. The pods'
checksum/config annotation hashes it, so a master restarts when its own file changes only.
*/}}
{{- define "sluice.masterToml" -}}
{{- $masters := include "sluice.masterEndpoints" . | fromJsonArray -}}
{{- $masterConfig := deepCopy (.Values.master.config | default dict) -}}
{{- include "sluice.refuseManaged" (dict "role" "master" "config" $masterConfig "managed" (dict
      "listen" "master.ports.grpc"
      "admin_listen" "master.ports.admin"
      "data_dir" "master.persistence")) -}}
{{- $masterDefaults := dict
      "listen" (printf "0.0.0.0:%d" (int .Values.master.ports.grpc))
      "admin_listen" (printf "0.0.0.0:%d" (int .Values.master.ports.admin))
      "data_dir" "/var/lib/sluice/master" -}}
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
{{- include "sluice.refuseManaged" (dict "role" "worker" "config" $workerConfig "managed" (dict
      "push_listen" "worker.ports.push"
      "fetch_listen" "worker.ports.fetch"
      "admin_listen" "worker.ports.admin"
      "data_dirs" "worker.disks"
      "id" "the pod name"
      "host" "the pod's DNS name"
      "node" "the pod's node"
      "zone" "worker.zone")) -}}
{{- $dataDirs := list -}}
{{- range .Values.worker.disks -}}
{{- $dataDirs = append $dataDirs (printf "/var/lib/sluice/%s" .name) -}}
{{- end -}}
{{- $workerDefaults := dict
      "master" $masters
      "push_listen" (printf "0.0.0.0:%d" (int .Values.worker.ports.push))
      "fetch_listen" (printf "0.0.0.0:%d" (int .Values.worker.ports.fetch))
      "admin_listen" (printf "0.0.0.0:%d" (int .Values.worker.ports.admin))
      "data_dirs" $dataDirs -}}
# Sluice worker settings (worker/src/config.rs), rendered by the chart. The pod's
# environment sets id, host, node and zone.
{{ include "sluice.toml" (mergeOverwrite $workerDefaults $workerConfig) | trim }}
{{ end -}}
