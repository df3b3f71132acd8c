{{/* Names, labels and the values derived from others, shared by every template. */}}

{{- define "tabserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-<chart>", or the release name when it already contains the chart name. */}}
{{- define "tabserve.fullname" -}}
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

{{- define "tabserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tabserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tabserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tabserve.labels" -}}
helm.sh/chart: {{ include "tabserve.chart" . }}
{{ include "tabserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tabserve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tabserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tabserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tabserve.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the API token: the user's, or the one the chart creates. */}}
{{- define "tabserve.authSecretName" -}}
{{- default (printf "%s-auth" (include "tabserve.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/*
The API token as a file, never an env var (env vars leak into crash dumps, `kubectl describe`
and child processes): the Secret's key mounted read-only, its path in TABSERVE_API_TOKEN_FILE.
Used by the serving pods and the helm test pod; each include renders nothing when auth is off.
*/}}
{{- define "tabserve.authTokenDir" -}}/var/run/secrets/tabserve{{- end -}}

{{- define "tabserve.authEnv" -}}
{{- if .Values.auth.enabled }}
- name: TABSERVE_API_TOKEN_FILE
  value: {{ include "tabserve.authTokenDir" . }}/api-token
{{- end }}
{{- end -}}

{{- define "tabserve.authVolumeMount" -}}
{{- if .Values.auth.enabled }}
- name: api-token
  mountPath: {{ include "tabserve.authTokenDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "tabserve.authVolume" -}}
{{- if .Values.auth.enabled }}
- name: api-token
  secret:
    secretName: {{ include "tabserve.authSecretName" . }}
    items:
      - key: {{ .Values.auth.secretKey }}
        path: api-token
    # Readable by the pod's fsGroup (the service's group), no one else.
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/*
Whole cores of resources.limits.cpu, rounded down, at least 1: "500m" -> 1, "2" -> 2,
2.5 -> 2, "4000m" -> 4. The worker rule in values.yaml starts from this number.
*/}}
{{- define "tabserve.cpuCores" -}}
{{- $cpu := toString (required "resources.limits.cpu is required: worker and thread counts are derived from it" .Values.resources.limits.cpu) -}}
{{- if hasSuffix "m" $cpu -}}
{{- max 1 (div (atoi (trimSuffix "m" $cpu)) 1000) -}}
{{- else -}}
{{- max 1 (int (floor (float64 $cpu))) -}}
{{- end -}}
{{- end -}}

{{/* Worker and thread counts: the explicit value, or the rule documented in values.yaml. */}}
{{- define "tabserve.apiWorkers" -}}
{{- $cores := int (include "tabserve.cpuCores" .) -}}
{{- .Values.workers.api | default (max 1 (div $cores 2)) -}}
{{- end -}}

{{- define "tabserve.runnerWorkers" -}}
{{- $cores := int (include "tabserve.cpuCores" .) -}}
{{- .Values.workers.runner | default (max 1 (div $cores 2)) -}}
{{- end -}}

{{- define "tabserve.modelThreads" -}}
{{- $cores := int (include "tabserve.cpuCores" .) -}}
{{- $api := int (include "tabserve.apiWorkers" .) -}}
{{- $runner := int (include "tabserve.runnerWorkers" .) -}}
{{- .Values.workers.modelThreads | default (max 1 (div (sub $cores $api) $runner)) -}}
{{- end -}}

{{/*
checkov policy-scan skips, each with its reason, as object annotations. Usage:
  {{ include "tabserve.checkovSkips" (list "CKV_K8S_15" "CKV_K8S_43") }}
*/}}
{{- define "tabserve.checkovSkips" -}}
{{- $reasons := dict
  "CKV_K8S_8" "One-shot pod that exits after its check; there is nothing to probe"
  "CKV_K8S_9" "One-shot pod that exits after its check; there is nothing to probe"
  "CKV_K8S_15" "image.pullPolicy is a value; tags are immutable bento versions, so IfNotPresent spares a registry round trip (and a registry outage) on every pod start"
  "CKV_K8S_40" "The uid is the BentoML image's own non-root user (1034), which owns its files; runAsNonRoot is enforced"
  "CKV_K8S_43" "Pin by digest with image.digest; by default the tag is the immutable bento version"
  "CKV2_K8S_6" "Serving pods: networkPolicy.enabled (on by default) was turned off. One-shot batch and helm test pods: no policy of theirs; they take no connections"
-}}
{{- range $index, $check := . }}
checkov.io/skip{{ add1 $index }}: {{ printf "%s=%s" $check (required (printf "no reason for skipping %s" $check) (get $reasons $check)) | quote }}
{{- end }}
{{- end -}}

{{/* The skips every object running the tabserve image needs, plus the given extra ones. */}}
{{- define "tabserve.imageCheckovSkips" -}}
{{- $checks := list "CKV_K8S_15" "CKV_K8S_40" "CKV_K8S_43" -}}
{{- include "tabserve.checkovSkips" (concat $checks .extra) -}}
{{- end -}}

{{/* The bento's source directory in the image: `tabserve` is importable from there. */}}
{{- define "tabserve.sourceDir" -}}
{{- printf "%s/src" (trimSuffix "/" .Values.bentoPath) -}}
{{- end -}}

{{/* Pod spec fields every pod running the image shares (serving, batch, helm test): pulled
with the same secrets, placed on the same nodes. */}}
{{- define "tabserve.podPlacement" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
