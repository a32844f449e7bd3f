{{/* Names, labels, images and the security settings shared by every pod of the chart. */}}

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

{{/* image reference: include "if.image" (list . .Values.operator.image). global.imageRegistry
(a parent chart's) replaces the repository's registry: its first path element when that looks
like a host (has a dot or a colon, or is localhost). */}}
{{- define "if.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- $tag := default $root.Chart.AppVersion $img.tag -}}
{{- $repo := $img.repository -}}
{{- $registry := (($root.Values.global | default dict).imageRegistry) | default "" -}}
{{- if $registry -}}
{{- $parts := splitList "/" $repo -}}
{{- $first := first $parts -}}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $repo = join "/" (rest $parts) -}}
{{- end -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" $registry) $repo -}}
{{- end -}}
{{- if $img.digest -}}
{{- printf "%s:%s@%s" $repo $tag $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets of every pod: the chart's, then a parent chart's global ones. */}}
{{- define "if.imagePullSecrets" -}}
{{- $secrets := list -}}
{{- range .Values.imagePullSecrets -}}
{{- $secrets = append $secrets (ternary (dict "name" .) . (kindIs "string" .)) -}}
{{- end -}}
{{- range ((.Values.global | default dict).imagePullSecrets | default list) -}}
{{- $secrets = append $secrets (ternary (dict "name" .) . (kindIs "string" .)) -}}
{{- end -}}
{{- with $secrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
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

{{/* Whether to leave the uid, gid and fsGroup to OpenShift's restricted-v2 SCC. */}}
{{- define "if.openshift" -}}
{{- $mode := .Values.openshift.adaptSecurityContext -}}
{{- if or (eq $mode "force") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "security.openshift.io/v1")) -}}true{{- end -}}
{{- end -}}

{{/* A security context from values, without the fixed ids on OpenShift:
include "if.securityContext" (list . .Values.router.podSecurityContext) */}}
{{- define "if.securityContext" -}}
{{- $root := index . 0 -}}
{{- $sc := deepCopy (index . 1) -}}
{{- if include "if.openshift" $root -}}
{{- $_ := unset $sc "runAsUser" -}}
{{- $_ := unset $sc "runAsGroup" -}}
{{- $_ := unset $sc "fsGroup" -}}
{{- end -}}
{{- toYaml $sc -}}
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
    {{- range (include "if.np.apiServerCidrs" . | fromJsonArray) }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- range $np.apiServer.ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end -}}

{{/* The API server's CIDRs (a JSON list): networkPolicy.apiServer.cidrs, else the addresses of
EndpointSlice default/kubernetes (which the API server keeps current) as /32 or /128, looked up
at install and upgrade. `helm template` cannot look up: it fails asking for the value rather
than allowing any address. */}}
{{- define "if.np.apiServerCidrs" -}}
{{- $cidrs := .Values.networkPolicy.apiServer.cidrs -}}
{{- if not $cidrs -}}
{{- $slice := lookup "discovery.k8s.io/v1" "EndpointSlice" "default" "kubernetes" -}}
{{- range (($slice | default dict).endpoints | default list) -}}
{{- range .addresses -}}
{{- $cidrs = append $cidrs (printf "%s/%s" . (ternary "128" "32" (contains ":" .))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (not $cidrs) (or .Release.IsInstall .Release.IsUpgrade) -}}
{{- fail "networkPolicy.apiServer.cidrs is required here: the API server's addresses could not be looked up (helm template, Argo CD, Flux or --dry-run). Set them from `kubectl get endpointslice -n default kubernetes` (e.g. --set networkPolicy.apiServer.cidrs={10.0.0.1/32}), or networkPolicy.enabled=false" -}}
{{- end -}}
{{- toJson $cidrs -}}
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

{{/*
The keys the chart shares with the operator, the router and the local fleet: the operator's
label prefix (its --annotation-prefix default) and the label every child of a factory
carries. Spelled once in factory_contract.names; tests/unit/contract holds these to it.
*/}}
{{- define "if.labelPrefix" -}}
inference.factory.dev
{{- end -}}

{{- define "if.managedByLabel" -}}
app.kubernetes.io/managed-by: inference-factory
{{- end -}}

{{/* The engines' pool labels (factory_contract.metrics.POOL_SERIES_LABELS), as a list. */}}
{{- define "if.poolSeriesLabels" -}}
factory pool region jurisdiction
{{- end -}}

{{/* The operator's --router-url (the rollout gates' golden prompts): operator.rollout.routerUrl,
else the router this release installs (its Service, by cluster DNS), else none. */}}
{{- define "if.operator.routerUrl" -}}
{{- if .Values.operator.rollout.routerUrl -}}
{{- .Values.operator.rollout.routerUrl -}}
{{- else if .Values.router.enabled -}}
{{- printf "http://%s.%s.svc:%v" (include "if.component" (list . "router")) .Release.Namespace .Values.router.service.port -}}
{{- end -}}
{{- end -}}

{{/* "true" when the operator sends golden prompts to this release's router: an admin key is
given and routerUrl is left to its default (the NetworkPolicies then let it through). */}}
{{- define "if.operator.asksOwnRouter" -}}
{{- $rollout := .Values.operator.rollout -}}
{{- if and .Values.operator.enabled .Values.router.enabled $rollout.adminKeySecret.name (not $rollout.routerUrl) -}}true{{- end -}}
{{- end -}}
