{{/* The chart's name, or nameOverride. */}}
{{- define "nvbind.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The DaemonSet's name: fullnameOverride, else the release's name when it holds the chart's, else <release>-<chart>. */}}
{{- define "nvbind.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Selector labels: those of manifests/base, so that either installs the same pods. */}}
{{- define "nvbind.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nvbind.name" . }}
app.kubernetes.io/part-of: nvbind
{{- end }}

{{/* Labels of every object. */}}
{{- define "nvbind.labels" -}}
{{ include "nvbind.selectorLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nvbind.serviceAccountName" -}}
{{- default (include "nvbind.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "nvbind.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where the plugin sees the host's /dev, /proc and /sys. */}}
{{- define "nvbind.devRootMount" -}}
{{- if eq (clean .Values.devRoot) "/" }}/host{{ else }}/host/dev-root{{ end }}
{{- end }}

{{/* The host's /dev/char, where the plugin keeps NVIDIA's links. */}}
{{- define "nvbind.devChar" -}}
{{- clean (printf "%s/dev/char" .Values.devRoot) }}
{{- end }}

{{/* Arguments both containers take to find the driver and the devices. */}}
{{- define "nvbind.rootArgs" -}}
- --driver-root={{ clean .Values.driverRoot }}
- --driver-root-mount=/host/driver-root
{{- if ne (clean .Values.devRoot) "/" }}
- --dev-root={{ clean .Values.devRoot }}
{{- end }}
- --dev-root-mount={{ include "nvbind.devRootMount" . }}
{{- end }}

{{/* The layout folder, given only where it is not nvbind's default. */}}
{{- define "nvbind.layoutArgs" -}}
{{- if ne (clean .Values.layouts.layoutRoot) "/run/nvbind" }}
- --layout-dir={{ clean .Values.layouts.layoutRoot }}/driver
{{- end }}
{{- end }}

{{/* Read-only mounts of the driver root and the host's devices, for both containers. */}}
{{- define "nvbind.rootMounts" -}}
{{- if eq (clean .Values.devRoot) "/" }}
- name: dev
  mountPath: /host/dev
  readOnly: true
{{- else }}
- name: dev-root
  mountPath: /host/dev-root
  readOnly: true
  mountPropagation: HostToContainer
{{- end }}
- name: driver-root
  mountPath: /host/driver-root
  readOnly: true
  mountPropagation: HostToContainer
{{- end }}
