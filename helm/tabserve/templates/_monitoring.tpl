{{- /*
Fails the render when the cluster does not serve a custom resource's API, instead of leaving the
object out: a ServiceMonitor or ScaledObject that silently vanished would leave the release
unscraped or unscaled. `helm install/upgrade` asks the cluster; `helm template` knows only
Kubernetes' own APIs unless given `--api-versions`.
Arguments: (list <root context> <API group/version> <kind> <value that asked for it>).
*/ -}}
{{- define "tabserve.requireApi" -}}
{{- $root := index . 0 }}
{{- $api := index . 1 }}
{{- if not ($root.Capabilities.APIVersions.Has $api) }}
{{- fail (printf "%s is true but the cluster does not serve %s (the %s CRD): install it first, or turn %s off; with `helm template`, pass --api-versions %s" (index . 3) $api (index . 2) (index . 3) $api) }}
{{- end }}
{{- end }}

{{- /*
A rule text of files/alerts.yaml with its ${placeholders} replaced; fails on one without a value.
Arguments: (list <text> <placeholder -> value dict> <rule name>).
*/ -}}
{{- define "tabserve.fillPlaceholders" -}}
{{- $text := index . 0 }}
{{- range $placeholder, $value := index . 1 }}
{{- $text = replace $placeholder $value $text }}
{{- end }}
{{- if contains "${" $text }}
{{- fail (printf "files/alerts.yaml: %s has a placeholder without a value: %s" (index . 2) $text) }}
{{- end }}
{{- $text }}
{{- end }}
