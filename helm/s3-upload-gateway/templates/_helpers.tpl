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
Labels of the helm test Pod: neither a backend of the Service nor counted by the Deployment.
*/}}
{{- define "s3-upload-gateway.testLabels" -}}
helm.sh/chart: {{ include "s3-upload-gateway.chart" . }}
{{ include "s3-upload-gateway.testSelectorLabels" . }}
{{ include "s3-upload-gateway.commonLabels" . }}
{{- end }}

{{/*
Labels that select the helm test Pod (the NetworkPolicy admits it).
*/}}
{{- define "s3-upload-gateway.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "s3-upload-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{/*
Labels every resource carries besides its selector labels.
*/}}
{{- define "s3-upload-gateway.commonLabels" -}}
{{- if .Chart.AppVersion -}}
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
Where the security files are mounted in the gateway's container, and the reaper's (the gateway's
CA, its client certificate and its bearer token).
*/}}
{{- define "s3-upload-gateway.tlsDir" -}}/etc/s3-upload-gateway/tls{{- end }}
{{- define "s3-upload-gateway.clientCADir" -}}/etc/s3-upload-gateway/client-ca{{- end }}
{{- define "s3-upload-gateway.tokensDir" -}}/etc/s3-upload-gateway/tokens{{- end }}
{{- define "s3-upload-gateway.policyDir" -}}/etc/s3-upload-gateway/policy{{- end }}
{{- define "s3-upload-gateway.writeKeysDir" -}}/etc/s3-upload-gateway/write-keys{{- end }}
{{- define "s3-upload-gateway.reaperCADir" -}}/etc/s3-upload-gateway/ca{{- end }}
{{- define "s3-upload-gateway.reaperClientCertDir" -}}/etc/s3-upload-gateway/client-cert{{- end }}
{{- define "s3-upload-gateway.reaperTokenDir" -}}/etc/s3-upload-gateway/token{{- end }}
{{- define "s3-upload-gateway.testCADir" -}}/etc/s3-upload-gateway/ca{{- end }}
{{- define "s3-upload-gateway.testClientCertDir" -}}/etc/s3-upload-gateway/client-cert{{- end }}

{{/*
The ConfigMap holding the authorization policy: the chart's own (from authorization.policy), or
authorization.existingConfigMap; empty when there is no policy.
*/}}
{{/*
The Secret holding the write token key file: resumableWrites.keys.existingSecret, else the one
the chart generates (write-keys-secret.yaml); empty when resumable writes are off.
*/}}
{{- define "s3-upload-gateway.writeKeysSecret" -}}
{{- if .Values.resumableWrites.enabled }}
{{- if .Values.resumableWrites.keys.existingSecret }}
{{- .Values.resumableWrites.keys.existingSecret }}
{{- else }}
{{- printf "%s-write-keys" (include "s3-upload-gateway.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}
{{- end }}
{{- end }}

{{- define "s3-upload-gateway.policyConfigMap" -}}
{{- if .Values.authorization.policy }}
{{- printf "%s-policy" (include "s3-upload-gateway.fullname" . | trunc 56 | trimSuffix "-") }}
{{- else }}
{{- .Values.authorization.existingConfigMap }}
{{- end }}
{{- end }}

{{/*
The container port the probes ask: the plaintext health port with TLS on (Kubernetes' gRPC probes
cannot speak TLS), else the gRPC port.
*/}}
{{- define "s3-upload-gateway.probePort" -}}
{{- if .Values.tls.enabled }}
{{- .Values.probes.healthPort }}
{{- else }}
{{- .Values.service.grpcPort }}
{{- end }}
{{- end }}

{{/*
Fail closed: refuse to render what the gateway would refuse to start with (it serves a pod address,
not loopback, so it needs TLS or plaintext=true, and a policy or allowAll=true), or what could not
work. Every problem is reported at once.
*/}}
{{- define "s3-upload-gateway.checkSecurity" -}}
{{- $problems := list }}
{{- $tls := .Values.tls }}
{{- if and $tls.enabled .Values.plaintext }}
{{- $problems = append $problems "tls.enabled and plaintext contradict each other: choose one" }}
{{- else if not (or $tls.enabled .Values.plaintext) }}
{{- $problems = append $problems "the gateway refuses to serve without TLS on a pod address: set tls.enabled=true with tls.secretName, or plaintext=true behind a mesh that terminates TLS" }}
{{- end }}
{{- if and $tls.enabled (not $tls.secretName) }}
{{- $problems = append $problems "tls.enabled needs tls.secretName: a kubernetes.io/tls Secret (tls.crt, tls.key), such as cert-manager writes" }}
{{- end }}
{{- if and $tls.clientCA.secretName (not $tls.enabled) }}
{{- $problems = append $problems "tls.clientCA.secretName needs tls.enabled: client certificates are part of TLS" }}
{{- end }}
{{- if $tls.enabled }}
{{- $taken := list (int .Values.service.grpcPort) }}
{{- if .Values.metrics.enabled }}
{{- $taken = append $taken (int .Values.service.metricsPort) }}
{{- end }}
{{- if has (int .Values.probes.healthPort) $taken }}
{{- $problems = append $problems (printf "probes.healthPort (%v) must differ from service.grpcPort and service.metricsPort" .Values.probes.healthPort) }}
{{- end }}
{{- end }}
{{- $authz := .Values.authorization }}
{{- if and $authz.policy $authz.existingConfigMap }}
{{- $problems = append $problems "set authorization.policy or authorization.existingConfigMap, not both" }}
{{- end }}
{{- if and $authz.allowAll (or $authz.policy $authz.existingConfigMap) }}
{{- $problems = append $problems "authorization.allowAll=true contradicts authorization.policy / existingConfigMap (the gateway refuses both): choose one" }}
{{- else if not (or $authz.allowAll $authz.policy $authz.existingConfigMap) }}
{{- $problems = append $problems "the gateway refuses to serve a pod address without an authorization policy: set authorization.policy (or existingConfigMap), or authorization.allowAll=true" }}
{{- end }}
{{- $reaper := .Values.reaper }}
{{- if $reaper.enabled }}
{{- if and $tls.clientCA.secretName (not $reaper.clientCert.secretName) }}
{{- $problems = append $problems "reaper.enabled with tls.clientCA needs reaper.clientCert.secretName: a kubernetes.io/tls Secret (tls.crt, tls.key) holding a client certificate the client CA issued, which reap-uploads presents (the gateway refuses connections without one)" }}
{{- else if and $reaper.clientCert.secretName (not $tls.clientCA.secretName) }}
{{- $problems = append $problems "reaper.clientCert.secretName needs tls.clientCA: without mutual TLS the gateway asks for no client certificate" }}
{{- end }}
{{- if and .Values.auth.tokens.existingSecret (not $reaper.token.existingSecret) }}
{{- $problems = append $problems "reaper.enabled with auth.tokens needs reaper.token.existingSecret: a Secret holding the reaper's bearer token (under reaper.token.key), which reap-uploads sends" }}
{{- else if and $reaper.token.existingSecret (not .Values.auth.tokens.existingSecret) }}
{{- $problems = append $problems "reaper.token.existingSecret needs auth.tokens: without a token file the gateway ignores bearer tokens, or with tls.clientCA rejects them" }}
{{- end }}
{{- end }}
{{- $test := .Values.helmTest }}
{{- if $test.enabled }}
{{- if and $tls.clientCA.secretName (not $test.clientCert.secretName) }}
{{- $problems = append $problems "helmTest.enabled with tls.clientCA needs helmTest.clientCert.secretName: a kubernetes.io/tls Secret (tls.crt, tls.key) holding a client certificate the client CA issued, such as reaper.clientCert's (the handshake needs one); or set helmTest.enabled=false" }}
{{- else if and $test.clientCert.secretName (not $tls.clientCA.secretName) }}
{{- $problems = append $problems "helmTest.clientCert.secretName needs tls.clientCA: without mutual TLS the gateway asks for no client certificate" }}
{{- end }}
{{- end }}
{{- if $problems }}
{{- fail (printf "\n  - %s" (join "\n  - " $problems)) }}
{{- end }}
{{- end }}

{{/*
The gateway's environment: the variables the chart owns, then one GATEWAY_* variable per non-null
config key (s3ReadTimeout -> GATEWAY_S3_READ_TIMEOUT), then extraEnv. extraEnv may not repeat a
variable rendered here (Kubernetes would silently keep one of the two), nor set a security variable
the chart owns even when it leaves it unset: those come from tls, auth, authorization, plaintext.
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
{{- $env = append $env (dict "name" "GATEWAY_PLAINTEXT" "value" (toString .Values.plaintext)) }}
{{- if .Values.tls.enabled }}
{{- $env = append $env (dict "name" "GATEWAY_TLS_CERT_FILE" "value" (printf "%s/tls.crt" (include "s3-upload-gateway.tlsDir" .))) }}
{{- $env = append $env (dict "name" "GATEWAY_TLS_KEY_FILE" "value" (printf "%s/tls.key" (include "s3-upload-gateway.tlsDir" .))) }}
{{- with .Values.tls.clientCA.secretName }}
{{- $env = append $env (dict "name" "GATEWAY_TLS_CLIENT_CA_FILE" "value" (printf "%s/%s" (include "s3-upload-gateway.clientCADir" $) $.Values.tls.clientCA.key)) }}
{{- end }}
{{- $env = append $env (dict "name" "GATEWAY_HEALTH_ADDRESS" "value" (printf "0.0.0.0:%v" .Values.probes.healthPort)) }}
{{- end }}
{{- with .Values.auth.tokens.existingSecret }}
{{- $env = append $env (dict "name" "GATEWAY_AUTH_TOKENS_FILE" "value" (printf "%s/%s" (include "s3-upload-gateway.tokensDir" $) $.Values.auth.tokens.key)) }}
{{- end }}
{{- if include "s3-upload-gateway.writeKeysSecret" . }}
{{- $env = append $env (dict "name" "GATEWAY_WRITE_TOKEN_KEYS_FILE" "value" (printf "%s/%s" (include "s3-upload-gateway.writeKeysDir" $) $.Values.resumableWrites.keys.key)) }}
{{- end }}
{{- if include "s3-upload-gateway.policyConfigMap" . }}
{{- $env = append $env (dict "name" "GATEWAY_POLICY_FILE" "value" (printf "%s/%s" (include "s3-upload-gateway.policyDir" .) .Values.authorization.key)) }}
{{- end }}
{{- $env = append $env (dict "name" "GATEWAY_ALLOW_ALL" "value" (toString .Values.authorization.allowAll)) }}
{{- range $key, $value := .Values.config }}
{{- if not (kindIs "invalid" $value) }}
{{- $name := printf "GATEWAY_%s" ($key | snakecase | upper) }}
{{- $env = append $env (dict "name" $name "value" (include "s3-upload-gateway.settingText" $value)) }}
{{- end }}
{{- end }}
{{- $reserved := list "GATEWAY_TLS_CERT_FILE" "GATEWAY_TLS_KEY_FILE" "GATEWAY_TLS_CLIENT_CA_FILE" "GATEWAY_HEALTH_ADDRESS" "GATEWAY_AUTH_TOKENS_FILE" "GATEWAY_POLICY_FILE" "GATEWAY_WRITE_TOKEN_KEYS_FILE" }}
{{- range $env }}
{{- $reserved = append $reserved .name }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if has .name $reserved }}
{{- fail (printf "extraEnv sets %s, which the chart already sets (from config, or itself)" .name) }}
{{- end }}
{{- end }}
{{- toYaml (concat $env .Values.extraEnv) }}
{{- end }}

{{/*
The image of the gateway, the reaper and the helm test Pod: repository@digest when image.digest is
set, else repository:tag (the chart's appVersion without a tag).
*/}}
{{- define "s3-upload-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The gateway's own defaults of the settings that the alert thresholds derive from, for the config
keys left null (tests/test_chart.py checks them against the gateway's).
*/}}
{{- define "s3-upload-gateway.gatewayDefaults" -}}
maxBufferBytes: 1073741824
streamWindow: 1048576
maxMessageSize: 4259840
maxStreams: 256
{{- end }}

{{/*
The UploadPart streams one gateway process admits: each reserves config.streamWindow +
config.maxMessageSize of config.maxBufferBytes, and there are at most config.maxStreams.
*/}}
{{- define "s3-upload-gateway.admittedStreams" -}}
{{- $setting := dict }}
{{- range $key, $default := include "s3-upload-gateway.gatewayDefaults" . | fromYaml }}
{{- $value := index $.Values.config $key }}
{{- $_ := set $setting $key (kindIs "invalid" $value | ternary $default $value | int64) }}
{{- end }}
{{- $perStream := add $setting.streamWindow $setting.maxMessageSize }}
{{- min $setting.maxStreams (div $setting.maxBufferBytes $perStream) }}
{{- end }}
