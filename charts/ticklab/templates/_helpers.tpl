{{/* Names and labels shared by every template. */}}

{{- define "ticklab.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ticklab.operatorName" -}}
{{- printf "%s-operator" (include "ticklab.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ticklab.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ticklab.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ticklab.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Labels on everything the chart installs. */}}
{{- define "ticklab.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: ticklab
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ticklab.labels" -}}
{{ include "ticklab.commonLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The operator's Deployment, pods and Service. */}}
{{- define "ticklab.operatorLabels" -}}
{{ include "ticklab.commonLabels" . }}
{{ include "ticklab.operatorSelectorLabels" . }}
{{- end -}}

{{/*
The operator's pod labels. app.kubernetes.io/name and component must stay
"ticklab" and "operator": the operator's experiment NetworkPolicies admit exactly
these pods to the traders' results (OPERATOR_POD_LABELS in operator/src/children.rs).
*/}}
{{- define "ticklab.operatorSelectorLabels" -}}
app.kubernetes.io/name: ticklab
app.kubernetes.io/component: operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Selects the pods of every experiment and recording (children carry these labels):
exchanges, traders, and one recorder per RecordingSession.
*/}}
{{- define "ticklab.experimentPodSelector" -}}
matchLabels:
  app.kubernetes.io/managed-by: ticklab-operator
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values: [exchange, trader, recorder]
{{- end -}}

{{- define "ticklab.dashboardsNamespace" -}}
{{- default .Release.Namespace .Values.monitoring.dashboards.namespace -}}
{{- end -}}

{{/* "k=v,k2=v2" for the operator's --metrics-namespace-selector. */}}
{{- define "ticklab.metricsNamespaceSelector" -}}
{{- $pairs := list -}}
{{- range $k, $v := .Values.networkPolicy.metricsNamespaceSelector -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
