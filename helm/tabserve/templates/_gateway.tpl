{{- /* One Gateway API route to one port of the Service: the HTTPRoute (httproute.yaml) and the
GRPCRoute (grpcroute.yaml) differ only in kind and port. A rule without matches takes every path
(HTTPRoute) or every method (GRPCRoute). Params: root, key (http|grpc), kind, port. */ -}}
{{- define "tabserve.gatewayRoute" }}
{{- $root := .root }}
{{- $route := index $root.Values.gateway .key }}
{{- if $route.enabled }}
{{- $api := printf "gateway.networking.k8s.io/v1/%s" .kind }}
{{- if not ($root.Capabilities.APIVersions.Has $api) }}
{{- fail (printf "gateway.%s.enabled: the cluster does not serve %s; install the Gateway API CRDs (standard channel), or with `helm template` pass --api-versions %s" .key $api $api) }}
{{- end }}
{{- $parents := include "tabserve.gatewayParents" (dict "root" $root "key" .key) | fromYamlArray }}
{{- if not $parents }}
{{- fail (printf "gateway.%s.enabled needs a Gateway: set gateway.parentRefs (or gateway.%s.parentRefs)" .key .key) }}
{{- end }}
apiVersion: gateway.networking.k8s.io/v1
kind: {{ .kind }}
metadata:
  name: {{ include "tabserve.fullname" $root }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "tabserve.labels" $root | nindent 4 }}
spec:
  parentRefs:
    {{- toYaml $parents | nindent 4 }}
  {{- with $route.hostnames }}
  hostnames:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  rules:
    - backendRefs:
        - name: {{ include "tabserve.fullname" $root }}
          port: {{ .port }}
      {{- with $route.filters }}
      filters:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- with $route.extraRules }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}
{{- end }}

{{- /* The Gateways a route attaches to, as a YAML list: its own parentRefs, else the shared ones. */ -}}
{{- define "tabserve.gatewayParents" }}
{{- toYaml (default .root.Values.gateway.parentRefs (index .root.Values.gateway .key).parentRefs) }}
{{- end }}
