{{/* A CronJob running one lang1ops command with the release's settings and Secrets.
Params: root (the chart context), name, command (list), job (its values: schedule, timeZone, args,
resources, activeDeadlineSeconds). */}}
{{- define "lang1-ops.cronjob" -}}
{{- $root := .root }}{{- $name := .name }}{{- $job := .job }}{{- $command := .command }}
apiVersion: batch/v1
kind: CronJob
metadata:
  name: {{ include "lang1-ops.fullname" $root }}-{{ $name }}
  labels:
    {{- include "lang1-ops.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $name }}
spec:
  schedule: {{ $job.schedule | quote }}
  {{- with $job.timeZone }}
  timeZone: {{ . | quote }}
  {{- end }}
  # A run still going when the next is due is left to finish: runs never overlap.
  concurrencyPolicy: Forbid
  successfulJobsHistoryLimit: 3
  failedJobsHistoryLimit: 3
  jobTemplate:
    spec:
      backoffLimit: 1
      activeDeadlineSeconds: {{ $job.activeDeadlineSeconds }}
      template:
        metadata:
          labels:
            {{- include "lang1-ops.labels" $root | nindent 12 }}
            app.kubernetes.io/component: {{ $name }}
          annotations:
            lang1ops.org/secrets-revision: {{ $root.Values.secrets.revision | quote }}
        spec:
          restartPolicy: Never
          {{- with $root.Values.imagePullSecrets }}
          imagePullSecrets:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml $root.Values.podSecurityContext | nindent 12 }}
          containers:
            - name: {{ $name }}
              image: {{ include "lang1-ops.image" (dict "root" $root "image" (dict)) }}
              imagePullPolicy: {{ $root.Values.image.pullPolicy }}
              command: {{ toJson $command }}
              {{- with $job.args }}
              args:
                {{- toYaml . | nindent 16 }}
              {{- end }}
              env:
                {{- include "lang1-ops.env" $root | nindent 16 }}
              envFrom:
                {{- include "lang1-ops.envFrom" $root | nindent 16 }}
              resources:
                {{- toYaml $job.resources | nindent 16 }}
              securityContext:
                {{- toYaml $root.Values.securityContext | nindent 16 }}
              volumeMounts:
                {{- include "lang1-ops.volumeMounts" $root | nindent 16 }}
          volumes:
            {{- include "lang1-ops.volumes" $root | nindent 12 }}
{{- end }}
