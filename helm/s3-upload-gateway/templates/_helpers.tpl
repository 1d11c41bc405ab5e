{{/*
The chart's name, or nameOverride.
*/}}
{{- define "s3-upload-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, else "<release>-<name>" (just the release name
when it already contains the chart's name), cut to the 63 characters of a DNS label.
*/}}
{{- define "s3-upload-gateway.fullname" -}}
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

{{/*
The headless Service's name: the full name with "-headless", still within 63 characters.
*/}}
{{- define "s3-upload-gateway.headlessName" -}}
{{- printf "%s-headless" (include "s3-upload-gateway.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "s3-upload-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource but the reaper's.
*/}}
{{- define "s3-upload-gateway.labels" -}}
helm.sh/chart: {{ include "s3-upload-gateway.chart" . }}
{{ include "s3-upload-gateway.selectorLabels" . }}
{{ include "s3-upload-gateway.commonLabels" . }}
{{- end }}

{{/*
Labels that select the gateway's pods (and not the reaper's).
*/}}
{{- define "s3-upload-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "s3-upload-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{/*
Labels of the reaper's CronJob and pods.
*/}}
{{- define "s3-upload-gateway.reaperLabels" -}}
helm.sh/chart: {{ include "s3-upload-gateway.chart" . }}
{{ include "s3-upload-gateway.reaperSelectorLabels" . }}
{{ include "s3-upload-gateway.commonLabels" . }}
{{- end }}

{{/*
Labels that select the reaper's pods.
*/}}
{{- define "s3-upload-gateway.reaperSelectorLabels" -}}
app.kubernetes.io/name: {{ include "s3-upload-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: reaper
{{- end }}

{{/*
Labels every resource carries besides its selector labels.
*/}}
{{- define "s3-upload-gateway.commonLabels" -}}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "s3-upload-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "s3-upload-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
A setting's value as an environment variable's text. Values arrive from YAML as float64, so whole
numbers are printed as integers (5368709120, not 5.36870912e+09); booleans print as true / false.
*/}}
{{- define "s3-upload-gateway.settingText" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
Seconds from SIGTERM to the gateway's exit at the latest: config.drainDelay + config.shutdownGrace,
rounded up.
*/}}
{{- define "s3-upload-gateway.shutdownSeconds" -}}
{{- int64 (ceil (addf .Values.config.drainDelay .Values.config.shutdownGrace)) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the value given, which must exceed the shutdown time, or the
shutdown time plus 10 s for the process to exit after cancelling what is left.
*/}}
{{- define "s3-upload-gateway.terminationGracePeriodSeconds" -}}
{{- $shutdown := include "s3-upload-gateway.shutdownSeconds" . | int64 }}
{{- $given := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $given }}
{{- add $shutdown 10 }}
{{- else if le (float64 $given) (addf .Values.config.drainDelay .Values.config.shutdownGrace) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed config.drainDelay + config.shutdownGrace (%v + %v), or Kubernetes kills the gateway before in-flight uploads finish" $given .Values.config.drainDelay .Values.config.shutdownGrace) }}
{{- else }}
{{- int64 $given }}
{{- end }}
{{- end }}

{{/*
The gateway's environment: the variables the chart owns, then one GATEWAY_* variable per non-null
config key (s3ReadTimeout -> GATEWAY_S3_READ_TIMEOUT), then extraEnv. extraEnv may not repeat a
variable rendered here: Kubernetes would silently keep one of the two.
*/}}
{{- define "s3-upload-gateway.env" -}}
{{- $env := list }}
{{- $env = append $env (dict "name" "GATEWAY_LISTEN_ADDRESS" "value" (printf "0.0.0.0:%v" .Values.service.grpcPort)) }}
{{- $metricsAddress := "" }}
{{- if .Values.metrics.enabled }}
{{- $metricsAddress = printf "0.0.0.0:%v" .Values.service.metricsPort }}
{{- end }}
{{- $env = append $env (dict "name" "GATEWAY_METRICS_ADDRESS" "value" $metricsAddress) }}
{{- $env = append $env (dict "name" "GATEWAY_EMBEDDED_S3" "value" "off") }}
{{- $env = append $env (dict "name" "GATEWAY_HEALTH" "value" "true") }}
{{- range $key, $value := .Values.config }}
{{- if not (kindIs "invalid" $value) }}
{{- $name := printf "GATEWAY_%s" ($key | snakecase | upper) }}
{{- $env = append $env (dict "name" $name "value" (include "s3-upload-gateway.settingText" $value)) }}
{{- end }}
{{- end }}
{{- $rendered := list }}
{{- range $env }}
{{- $rendered = append $rendered .name }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if has .name $rendered }}
{{- fail (printf "extraEnv sets %s, which the chart already sets (from config, or itself)" .name) }}
{{- end }}
{{- end }}
{{- toYaml (concat $env .Values.extraEnv) }}
{{- end }}

{{/*
The image of the gateway and of the reaper.
*/}}
{{- define "s3-upload-gateway.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
