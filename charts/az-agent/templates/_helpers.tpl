{{/* The Service name is fixed: the docs port-forward svc/az-service. */}}
{{- define "az-agent.name" -}}az-service{{- end }}

{{- define "az-agent.values" -}}{{ toYaml (index .Values "az-service") }}{{- end }}

{{- define "az-agent.selectorLabels" -}}
app.kubernetes.io/name: az-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "az-agent.labels" -}}
{{ include "az-agent.selectorLabels" . }}
app.kubernetes.io/component: az-service
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "az-agent.serviceAccountName" -}}
{{- $sa := (index .Values "az-service").serviceAccount -}}
{{- if $sa.create }}{{ default (include "az-agent.name" .) $sa.name }}{{ else }}{{ default "default" $sa.name }}{{ end -}}
{{- end }}

{{- define "az-agent.tokenSecret" -}}
{{- $t := (index .Values "az-service").apiToken -}}
{{- default (printf "%s-api-token" (include "az-agent.name" .)) $t.existingSecret -}}
{{- end }}

{{- define "az-agent.tokenDir" -}}/var/run/az-agent/api-token{{- end }}

{{- define "az-agent.tlsDir" -}}/var/run/az-agent/tls{{- end }}

{{/* The storage the agent uses: az-service.config.cloudStorage over global.cloudStorage. Only
     the keys the templates need; explicit so that a false or "" override wins too. */}}
{{- define "az-agent.storage" -}}
{{- $global := .Values.global.cloudStorage -}}
{{- $override := (index .Values "az-service").config.cloudStorage | default dict -}}
{{- $storage := dict "type" $global.type "useSecret" $global.useSecret "secretName" $global.secretName -}}
{{- range $key := list "type" "useSecret" "secretName" -}}
{{- if hasKey $override $key }}{{ $_ := set $storage $key (get $override $key) }}{{ end -}}
{{- end -}}
{{ toYaml $storage }}
{{- end }}

{{/* Secret names mounted under secretsDir, one per line, sorted and unique. */}}
{{- define "az-agent.secretNames" -}}
{{- $config := (index .Values "az-service").config -}}
{{- $storage := include "az-agent.storage" . | fromYaml -}}
{{- $names := list -}}
{{- if $storage.useSecret }}{{ $names = append $names $storage.secretName }}{{ end -}}
{{- if and $config.postgres.passwordSecret $config.postgres.databases }}{{ $names = append $names $config.postgres.passwordSecret }}{{ end -}}
{{- range $name := list $config.pinot.authSecret $config.alertmanager.tokenSecret $config.kubernetes.sourceTokenSecret -}}
{{- if $name }}{{ $names = append $names $name }}{{ end -}}
{{- end -}}
{{- range $names | uniq | sortAlpha }}
{{ . }}
{{- end -}}
{{- end }}

{{- define "az-agent.coldStandbyEnabled" -}}
{{- $cold := (index .Values "az-service").config.coldStandby -}}
{{- if or $cold.workloads $cold.selector }}true{{ end -}}
{{- end }}

{{- define "az-agent.scheme" -}}
{{- $svc := index .Values "az-service" -}}
{{- if or $svc.config.http.tlsCertFile $svc.tls.secretName }}HTTPS{{ else }}HTTP{{ end -}}
{{- end }}

{{/* The agent's configuration file, from the values. */}}
{{- define "az-agent.config" -}}
{{- $svc := index .Values "az-service" -}}
{{- $config := deepCopy $svc.config -}}
{{- if $svc.apiToken.enabled }}
{{- $_ := set $config.http "tokenFile" (printf "%s/token" (include "az-agent.tokenDir" .)) -}}
{{- end }}
{{- if $svc.tls.secretName }}
{{- $_ := set $config.http "tlsCertFile" (printf "%s/tls.crt" (include "az-agent.tlsDir" .)) -}}
{{- $_ := set $config.http "tlsKeyFile" (printf "%s/tls.key" (include "az-agent.tlsDir" .)) -}}
{{- end }}
{{- if and (not $config.zone) (not .Values.global.orgId) }}
{{- fail "az-service.config.zone is required (or set global.orgId to derive <orgId>-<release>-<namespace>)" }}
{{- end }}
{{- $global := dict "cloudStorage" .Values.global.cloudStorage "orgId" .Values.global.orgId "releaseName" .Release.Name "namespace" .Release.Namespace -}}
{{- toYaml (dict "global" $global "az-service" (dict "config" $config)) }}
{{- end }}
