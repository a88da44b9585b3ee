{{/* The chart's name, at most 63 characters. */}}
{{- define "rmm-monitor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' base name: the release name when it already holds the chart's name. */}}
{{- define "rmm-monitor.fullname" -}}
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

{{/* Labels that select the daemon's pods; never change them on a running release. */}}
{{- define "rmm-monitor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rmm-monitor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "rmm-monitor.labels" -}}
{{ include "rmm-monitor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: rmm-monitor
{{- if .Values.helmLabels }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
{{- end }}

{{/* The daemon's image: repository@digest when a digest is given, else repository:tag. */}}
{{- define "rmm-monitor.image" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}
{{- end }}

{{/* The lines of .text, each on a new line indented by .indent spaces (empty lines stay empty):
     the body of a YAML block scalar. */}}
{{- define "rmm-monitor.block" -}}
{{- range (splitList "\n" (trimSuffix "\n" .text)) }}
{{ if . }}{{ repeat $.indent " " }}{{ . }}{{ end }}
{{- end }}
{{- end }}
