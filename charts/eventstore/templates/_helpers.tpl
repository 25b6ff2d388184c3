{{/*
eventstore.name: the chart name (or nameOverride), cut to a DNS label.
*/}}
{{- define "eventstore.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
eventstore.fullname: release-qualified name of the operator's objects.
*/}}
{{- define "eventstore.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s-operator" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
eventstore.chart: chart name and version, for the helm.sh/chart label.
*/}}
{{- define "eventstore.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
eventstore.labels: the standard app.kubernetes.io/* labels of every object.
*/}}
{{- define "eventstore.labels" -}}
helm.sh/chart: {{ include "eventstore.chart" . }}
{{ include "eventstore.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: eventstore
{{- end }}

{{/*
eventstore.selectorLabels: the operator pod's selector (never changes on upgrade).
*/}}
{{- define "eventstore.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eventstore.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
eventstore.serviceAccountName: the operator's ServiceAccount.
*/}}
{{- define "eventstore.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eventstore.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
eventstore.image: repository:tag, the tag defaulting to the appVersion.
*/}}
{{- define "eventstore.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
eventstore.watchNamespaces: the namespaces the operator watches (a list; the release
namespace when none are given).
*/}}
{{- define "eventstore.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- toJson (uniq .Values.operator.watchNamespaces) }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}
