{{/* Checks the JSON schema cannot express; each fails the render with a message naming the value. */}}
{{- define "lang1-ops.validate" -}}
{{- if not .Values.secrets.store.name }}
{{- fail "secrets.store.name is required: the store's database URL must come from a Secret (key secrets.store.key), never from values" }}
{{- end }}
{{- if not .Values.secrets.rayAuth.name }}
{{- fail "secrets.rayAuth.name is required: Ray's token (key secrets.rayAuth.key) authenticates every Ray port of the cluster; create it with e.g. kubectl create secret generic lang1ops-ray-auth --from-literal=token=$(openssl rand -hex 32)" }}
{{- end }}
{{- if and (eq .Values.registry.mode "volume") (empty .Values.registry.volume) }}
{{- fail "registry.mode is volume but registry.volume is empty: give a volume source (e.g. a CSI object-store mount)" }}
{{- end }}
{{- $gpus := 0 }}
{{- $names := dict }}
{{- range .Values.workerGroups }}
{{- if hasKey $names .name }}
{{- fail (printf "workerGroups: the group name %q is used twice" .name) }}
{{- end }}
{{- $_ := set $names .name true }}
{{- if gt (int .minReplicas) (int .maxReplicas) }}
{{- fail (printf "workerGroups[%s]: minReplicas (%d) is above maxReplicas (%d)" .name (int .minReplicas) (int .maxReplicas)) }}
{{- end }}
{{- if or (lt (int .replicas) (int .minReplicas)) (gt (int .replicas) (int .maxReplicas)) }}
{{- fail (printf "workerGroups[%s]: replicas (%d) must lie between minReplicas (%d) and maxReplicas (%d)" .name (int .replicas) (int .minReplicas) (int .maxReplicas)) }}
{{- end }}
{{- $gpus = add $gpus (mul (int (default 0 .gpus)) (int .maxReplicas)) }}
{{- end }}
{{- $serving := default (dict) .Values.settings.serving }}
{{- /* every replica must load the same version: aliases resolve at each replica's start, so an
autoscaled replica after a promotion would answer with another model than its peers */}}
{{- if not (regexMatch "^v[0-9]+$" (toString (default "" $serving.model_ref))) }}
{{- fail (printf "settings.serving.model_ref must be a pinned registry version like v0007, not %q: on a cluster replicas resolve an alias when they start, so they could serve different models after a promotion; roll a promotion with --set settings.serving.model_ref=vNNNN" (toString (default "" $serving.model_ref))) }}
{{- end }}
{{- if and $serving.shadow (not (regexMatch "^v[0-9]+$" (toString (default "" $serving.shadow_ref)))) }}
{{- fail "settings.serving.shadow is on but settings.serving.shadow_ref is not a pinned version like v0008" }}
{{- end }}
{{- if and (eq (default "cpu" $serving.device) "cuda") (eq (int $gpus) 0) }}
{{- fail "settings.serving.device is cuda but no workerGroups entry has gpus > 0: the scorer replicas (1 GPU each) could never be placed" }}
{{- end }}
{{- if and (eq (default "hf" $serving.backend) "vllm") (ne (default "cpu" $serving.device) "cuda") }}
{{- fail "settings.serving.backend is vllm but settings.serving.device is not cuda: vLLM runs on GPU workers only" }}
{{- end }}
{{- with $serving.autoscaling }}
{{- if gt (int .min_replicas) (int .max_replicas) }}
{{- fail (printf "settings.serving.autoscaling: min_replicas (%d) is above max_replicas (%d)" (int .min_replicas) (int .max_replicas)) }}
{{- end }}
{{- if and (eq (default "cpu" $serving.device) "cuda") (gt (int .max_replicas) (int $gpus)) }}
{{- fail (printf "settings.serving.autoscaling.max_replicas (%d) needs one GPU each but the GPU worker groups offer at most %d" (int .max_replicas) (int $gpus)) }}
{{- end }}
{{- end }}
{{- end }}
