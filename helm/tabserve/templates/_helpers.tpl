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

{{/* The version of what runs: the image tag, or the chart's appVersion when the tag is empty. */}}
{{- define "tabserve.version" -}}
{{- default .Chart.AppVersion .Values.image.tag | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object the chart renders: the serving pods' selector labels, then the rest. */}}
{{- define "tabserve.labels" -}}
{{ include "tabserve.selectorLabels" . }}
{{ include "tabserve.releaseLabels" . }}
{{- end -}}

{{/* Every object label but the selector ones, commonLabels included: objects whose pods must not
be selected by the serving Service (helm test, batch) add a name of their own. */}}
{{- define "tabserve.releaseLabels" -}}
helm.sh/chart: {{ include "tabserve.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{ include "tabserve.componentLabels" (dict "context" . "component" "") }}
{{- end -}}

{{/*
Labels of the pods (and, with an empty component, of every object): the version, the component
(server, batch), commonLabels. Never in a selector, which is immutable: a version label there
would make every upgrade fail. No helm.sh/chart on pods: a chart bump alone must not roll them.
Usage: {{ include "tabserve.componentLabels" (dict "context" . "component" "server") }}
*/}}
{{- define "tabserve.componentLabels" -}}
app.kubernetes.io/version: {{ include "tabserve.version" .context | quote }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/part-of: tabserve
{{- with .context.Values.commonLabels }}
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
2.5 -> 2, "4000m" -> 4. The worker rule in values.yaml starts from this number; only the counts
left at 0 in values.workers need it, so a pod without a CPU limit sets all three.
*/}}
{{- define "tabserve.cpuCores" -}}
{{- $cpu := toString (required "resources.limits.cpu is unset: set it, or set workers.api, workers.runner and workers.modelThreads (each count left at 0 is derived from the CPU limit)" (dig "limits" "cpu" "" .Values.resources)) -}}
{{- if hasSuffix "m" $cpu -}}
{{- max 1 (div (atoi (trimSuffix "m" $cpu)) 1000) -}}
{{- else -}}
{{- max 1 (int (floor (float64 $cpu))) -}}
{{- end -}}
{{- end -}}

{{/* Worker and thread counts: the explicit value, or the rule documented in values.yaml. */}}
{{- define "tabserve.apiWorkers" -}}
{{- include "tabserve.workersOrHalfTheCores" (dict "context" . "count" .Values.workers.api) -}}
{{- end -}}

{{- define "tabserve.runnerWorkers" -}}
{{- include "tabserve.workersOrHalfTheCores" (dict "context" . "count" .Values.workers.runner) -}}
{{- end -}}

{{/* `count` when set, else max(1, C / 2). An if, not `default`: the CPU limit is only read
(and required) when the count is 0. */}}
{{- define "tabserve.workersOrHalfTheCores" -}}
{{- if .count -}}
{{- .count -}}
{{- else -}}
{{- max 1 (div (int (include "tabserve.cpuCores" .context)) 2) -}}
{{- end -}}
{{- end -}}

{{- define "tabserve.modelThreads" -}}
{{- if .Values.workers.modelThreads -}}
{{- .Values.workers.modelThreads -}}
{{- else -}}
{{- $cores := int (include "tabserve.cpuCores" .) -}}
{{- $api := int (include "tabserve.apiWorkers" .) -}}
{{- $runner := int (include "tabserve.runnerWorkers" .) -}}
{{- max 1 (div (sub $cores $api) $runner) -}}
{{- end -}}
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

{{/*
spec.replicas of the Deployment: replicaCount when the count is fixed (null: left out, for an Argo
Rollout that takes its pod template from the Deployment and owns the count). With an autoscaler (HPA or
KEDA) the autoscaler owns the count, yet leaving the field out is not neutral under Helm: its
three-way merge deletes a field the previous revision set and the new one lacks, and Kubernetes
then defaults it to 1. Switching from fixed replicas to autoscaling (or `helm rollback` to a
revision without the field) dropped the release to one pod until the HPA acted. Hence:
- the Deployment exists: its current count (the HPA's), so the upgrade leaves it as it is;
- an install against a cluster (no Deployment yet): minReplicas, which the stored revision keeps,
  so a later rollback to it sets a count instead of deleting it;
- no cluster (`helm template`, GitOps tools rendering with it, k8s/base, --dry-run=client: lookup
  answers an empty map): left out, or every `kubectl apply` / sync would reset the HPA's count.
The lookup lists Deployments (the empty list of a connected install still tells it apart from
the empty map of no cluster): Helm's --wait needs that permission in the namespace anyway.
*/}}
{{- define "tabserve.replicas" -}}
{{- if not (or .Values.autoscaling.enabled .Values.keda.enabled) -}}
{{- with .Values.replicaCount -}}{{ . }}{{- end -}}
{{- else -}}
{{- $deployments := lookup "apps/v1" "Deployment" .Release.Namespace "" -}}
{{- if $deployments -}}
{{- $replicas := .Values.autoscaling.minReplicas -}}
{{- $name := include "tabserve.fullname" . -}}
{{- range $deployments.items -}}
{{- if eq .metadata.name $name -}}
{{- $replicas = .spec.replicas -}}
{{- end -}}
{{- end -}}
{{- int $replicas -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* What the HPA or KEDA's ScaledObject scales: autoscaling.scaleTargetRef (an Argo Rollout that
takes its pod template from the Deployment), else the Deployment. */}}
{{- define "tabserve.scaleTargetRef" -}}
{{- with .Values.autoscaling.scaleTargetRef -}}
apiVersion: {{ .apiVersion }}
kind: {{ .kind }}
name: {{ .name }}
{{- else -}}
apiVersion: apps/v1
kind: Deployment
name: {{ include "tabserve.fullname" . }}
{{- end -}}
{{- end -}}

{{/* LabelSelector of the serving pods for the PodDisruptionBudget and the NetworkPolicy. Flagger's
copy of the Deployment ("<fullname>-primary") labels its pods app.kubernetes.io/name
"<name>-primary"; with canary.flagger.primaryPods those pods are selected too. */}}
{{- define "tabserve.podLabelSelector" -}}
{{- if .Values.canary.flagger.primaryPods -}}
matchLabels:
  app.kubernetes.io/instance: {{ .Release.Name }}
matchExpressions:
  - key: app.kubernetes.io/name
    operator: In
    values: [{{ include "tabserve.name" . }}, {{ include "tabserve.name" . }}-primary]
{{- else -}}
matchLabels:
  {{- include "tabserve.selectorLabels" . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* envFrom of the containers running the service's code (serving, batch): the chart's
ConfigMap (config.*), then extraEnvFrom. Their `env` (extraEnv) wins over both. */}}
{{- define "tabserve.envFrom" -}}
- configMapRef:
    name: {{ include "tabserve.fullname" . }}
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
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
