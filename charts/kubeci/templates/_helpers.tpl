{{/* The chart's name. */}}
{{- define "kubeci.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object's name: `<release>-kubeci`, or just the release when it says kubeci. */}}
{{- define "kubeci.fullname" -}}
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

{{/* Labels of every object. */}}
{{- define "kubeci.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kubeci.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: include with (dict "root" $ "component" "director"). */}}
{{- define "kubeci.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeci.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Name of one component's objects (Deployment, ServiceAccount, ClusterRole). */}}
{{- define "kubeci.componentName" -}}
{{- printf "%s-%s" (include "kubeci.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The image of one component: include with (dict "root" $ "image" .Values.director.image). */}}
{{- define "kubeci.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .image (default .root.Chart.AppVersion .root.Values.image.tag) }}
{{- end }}

{{/* The Secret holding the webhook's certificate. */}}
{{- define "kubeci.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "kubeci.fullname" .) }}
{{- end }}

{{/* The webhook's Service. */}}
{{- define "kubeci.webhookService" -}}
{{- printf "%s-webhook" (include "kubeci.fullname" .) }}
{{- end }}

{{/*
The pod-level parts every component shares: include with
(dict "root" $ "component" "director" "values" .Values.director "serviceAccount" true).
*/}}
{{- define "kubeci.podCommon" -}}
serviceAccountName: {{ include "kubeci.componentName" . }}
automountServiceAccountToken: true
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The container-level parts every component shares (image, common flags' env, probes, ports). */}}
{{- define "kubeci.containerCommon" -}}
image: {{ include "kubeci.image" (dict "root" .root "image" .values.image) }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
securityContext:
  {{- toYaml .root.Values.securityContext | nindent 2 }}
resources:
  {{- toYaml .values.resources | nindent 2 }}
ports:
  - name: metrics
    containerPort: {{ .root.Values.metricsPort }}
    protocol: TCP
  {{- range .extraPorts }}
  - name: {{ .name }}
    containerPort: {{ .port }}
    protocol: TCP
  {{- end }}
livenessProbe:
  httpGet: {path: /livez, port: metrics}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  periodSeconds: 5
  failureThreshold: 2
{{- end }}

{{/* The environment every component reads: the common flags of DESIGN.md §8. */}}
{{- define "kubeci.commonEnv" -}}
- name: KUBECI_METRICS_ADDR
  value: {{ printf "0.0.0.0:%v" .Values.metricsPort | quote }}
- name: KUBECI_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.watchNamespace }}
- name: KUBECI_NAMESPACE
  value: {{ . | quote }}
{{- end }}
- name: KUBECI_IDENTITY
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
{{- end }}

{{/*
The webhook's certificate as a dict (ca.crt, tls.crt, tls.key), generated once per render: the
existing Secret's when there is one (so upgrades keep it and the CA bundle stays valid), else a
new CA and a serving certificate for the webhook Service's DNS names.
*/}}
{{- define "kubeci.webhookCertData" -}}
{{- if not (hasKey .Values "__webhookCert") }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "kubeci.webhookSecret" .) }}
{{- if and $secret (hasKey ($secret.data | default dict) "ca.crt") }}
{{- $_ := set .Values "__webhookCert" (dict "ca.crt" (index $secret.data "ca.crt") "tls.crt" (index $secret.data "tls.crt") "tls.key" (index $secret.data "tls.key")) }}
{{- else }}
{{- $service := include "kubeci.webhookService" . }}
{{- $dns := list $service (printf "%s.%s" $service .Release.Namespace) (printf "%s.%s.svc" $service .Release.Namespace) (printf "%s.%s.svc.cluster.local" $service .Release.Namespace) }}
{{- $days := int .Values.webhook.certificate.validityDays }}
{{- $ca := genCA (printf "%s-webhook-ca" (include "kubeci.fullname" .)) $days }}
{{- $cert := genSignedCert (printf "%s.%s.svc" $service .Release.Namespace) nil $dns $days $ca }}
{{- $_ := set .Values "__webhookCert" (dict "ca.crt" ($ca.Cert | b64enc) "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc)) }}
{{- end }}
{{- end }}
{{- toYaml (get .Values "__webhookCert") }}
{{- end }}

{{/* A fingerprint of the webhook certificate, to roll the director when it changes. */}}
{{- define "kubeci.webhookCert" -}}
{{- index (include "kubeci.webhookCertData" . | fromYaml) "tls.crt" }}
{{- end }}
