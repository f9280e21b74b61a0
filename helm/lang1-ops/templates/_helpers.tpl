{{/* Names and labels. */}}
{{- define "lang1-ops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The resource name prefix; kept to 40 characters because KubeRay appends suffixes to it. */}}
{{- define "lang1-ops.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lang1-ops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lang1-ops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lang1-ops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lang1-ops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lang1-ops
{{- end }}

{{/* image: (dict "root" $ "image" $override) -> "repository:tag" */}}
{{- define "lang1-ops.image" -}}
{{- $image := mergeOverwrite (deepCopy .root.Values.image) (default (dict) .image) }}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) }}
{{- end }}

{{- define "lang1-ops.settingsConfigMap" -}}
{{ include "lang1-ops.fullname" . }}-settings
{{- end }}

{{- define "lang1-ops.claimName" -}}
{{- default (printf "%s-data" (include "lang1-ops.fullname" .)) .Values.registry.pvc.existingClaim }}
{{- end }}

{{- define "lang1-ops.servePort" -}}
{{- dig "serving" "port" 8000 .Values.settings }}
{{- end }}

{{/* Environment of every lang1-ops container: settings from the ConfigMap, secrets from Secrets. */}}
{{- define "lang1-ops.envFrom" -}}
- configMapRef:
    name: {{ include "lang1-ops.settingsConfigMap" . }}
{{- end }}

{{- define "lang1-ops.env" -}}
- name: LANG1OPS_HOME
  value: {{ .Values.registry.dataDir | quote }}
- name: LANG1OPS_REGISTRY_DIR
  value: {{ printf "%s/registry" .Values.registry.dataDir | quote }}
- name: HF_HUB_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
- name: LANG1OPS_SERVING__STORE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.store.name }}
      key: {{ .Values.secrets.store.key }}
# Ray's token authentication: every GCS, raylet, worker and dashboard port of the cluster
# refuses a caller without the token (the NetworkPolicy narrows who can even connect).
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.rayAuth.name }}
      key: {{ .Values.secrets.rayAuth.key }}
# Serve's direct ingress opens an extra gRPC server per replica; requests go through the proxy.
- name: RAY_SERVE_ENABLE_DIRECT_INGRESS
  value: "0"
{{- with .Values.secrets.auth.name }}
- name: LANG1OPS_SERVING__AUTH
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secrets.auth.key }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "lang1-ops.volumeMounts" -}}
- name: data
  mountPath: {{ .Values.registry.dataDir }}
{{- with .Values.secrets.fhirClient.name }}
- name: fhir-client-key
  mountPath: {{ $.Values.secrets.fhirClient.mountPath }}
  readOnly: true
{{- end }}
{{- with .Values.secrets.jwks.name }}
- name: ehr-jwks
  mountPath: {{ $.Values.secrets.jwks.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "lang1-ops.volumes" -}}
- name: data
{{- if eq .Values.registry.mode "pvc" }}
  persistentVolumeClaim:
    claimName: {{ include "lang1-ops.claimName" . }}
{{- else }}
{{- toYaml .Values.registry.volume | nindent 2 }}
{{- end }}
{{- with .Values.secrets.fhirClient.name }}
- name: fhir-client-key
  secret:
    secretName: {{ . }}
    defaultMode: 0400
{{- end }}
{{- with .Values.secrets.jwks.name }}
- name: ehr-jwks
  secret:
    secretName: {{ . }}
    defaultMode: 0444
{{- end }}
{{- end }}

{{/* The pod template of a Ray node. (dict "root" $ "group" $group "role" "head|worker" "component" "serve|retrain" "settingsEnv" bool)
settingsEnv: the settings ConfigMap as env, for jobs; the Serve app gets its settings as args only, so
stale env in long-lived pods can never disagree with the deployed config. */}}
{{- define "lang1-ops.rayPodTemplate" -}}
{{- $root := .root }}
{{- $group := .group }}
metadata:
  labels:
    {{- include "lang1-ops.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  annotations:
    # A changed revision replaces the pods so rotated Secrets are read; settings changes do not:
    # they reach the Serve app through serveConfigV2 (an in-place Serve update, no new pods).
    lang1ops.org/secrets-revision: {{ $root.Values.secrets.revision | quote }}
spec:
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ printf "ray-%s" .role }}
      image: {{ include "lang1-ops.image" (dict "root" $root "image" $group.image) }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      {{- if eq .role "head" }}
      ports:
        - {name: gcs-server, containerPort: 6379}
        - {name: dashboard, containerPort: 8265}
        - {name: client, containerPort: 10001}
        - {name: serve, containerPort: {{ include "lang1-ops.servePort" $root }}}
        - {name: metrics, containerPort: 8080}
      {{- else }}
      ports:
        - {name: serve, containerPort: {{ include "lang1-ops.servePort" $root }}}
        - {name: metrics, containerPort: 8080}
      {{- end }}
      env:
        {{- include "lang1-ops.env" $root | nindent 8 }}
      {{- if .settingsEnv }}
      envFrom:
        {{- include "lang1-ops.envFrom" $root | nindent 8 }}
      {{- end }}
      resources:
        {{- $resources := deepCopy (default (dict) $group.resources) }}
        {{- if gt (int (default 0 $group.gpus)) 0 }}
        {{- $_ := set $resources "requests" (mergeOverwrite (default (dict) $resources.requests) (dict "nvidia.com/gpu" (int $group.gpus))) }}
        {{- $_ := set $resources "limits" (mergeOverwrite (default (dict) $resources.limits) (dict "nvidia.com/gpu" (int $group.gpus))) }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        {{- include "lang1-ops.volumeMounts" $root | nindent 8 }}
        - name: shm
          mountPath: /dev/shm
  volumes:
    {{- include "lang1-ops.volumes" $root | nindent 4 }}
    - name: shm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $root.Values.shmSize }}
  {{- with $group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
