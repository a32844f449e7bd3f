{{/* Names, labels and the security settings shared by every pod of the chart. */}}

{{- define "if.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "if.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>", e.g. include "if.component" (list . "operator") */}}
{{- define "if.component" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "if.fullname" $root | trunc 50 | trimSuffix "-") (index . 1) -}}
{{- end -}}

{{- define "if.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "if.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: inference-factory
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component: include "if.componentLabels" (list . "router") */}}
{{- define "if.componentLabels" -}}
{{ include "if.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "if.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "if.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* image reference: include "if.image" (list . .Values.operator.image) */}}
{{- define "if.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- $tag := default $root.Chart.AppVersion $img.tag -}}
{{- if $img.digest -}}
{{- printf "%s:%s@%s" $img.repository $tag $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "if.serviceAccountName" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $sa := (index $root.Values $component).serviceAccount -}}
{{- if $sa.create -}}
{{- default (include "if.component" (list $root $component)) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{/* Pod Security Standard "restricted": pod level. uid/gid 65532 as in images/. */}}
{{- define "if.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod Security Standard "restricted": container level. */}}
{{- define "if.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Whether the Prometheus Operator's API is served (ServiceMonitor, PodMonitor, rules). */}}
{{- define "if.hasPrometheusOperator" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}true{{- end -}}
{{- end -}}

{{/* NetworkPolicy egress every pod of the chart needs: DNS and the API server. */}}
{{- define "if.np.commonEgress" -}}
{{- $np := .Values.networkPolicy -}}
- to:
    - namespaceSelector:
        matchLabels:
          {{- toYaml $np.dns.namespaceLabels | nindent 10 }}
      podSelector:
        matchLabels:
          {{- toYaml $np.dns.podLabels | nindent 10 }}
  ports:
    {{- range $np.dns.ports }}
    - {port: {{ . }}, protocol: UDP}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
- to:
    {{- range $np.apiServer.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- range $np.apiServer.ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end -}}

{{/* NetworkPolicy peer: the Prometheus pods. */}}
{{- define "if.np.prometheusPeer" -}}
{{- $np := .Values.networkPolicy -}}
- namespaceSelector:
    matchLabels:
      {{- toYaml $np.prometheus.namespaceLabels | nindent 6 }}
  podSelector:
    matchLabels:
      {{- toYaml $np.prometheus.podLabels | nindent 6 }}
{{- end -}}
