{{- define "operator-k8s.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "operator-k8s.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "operator-k8s.labels" -}}
app.kubernetes.io/name: {{ include "operator-k8s.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "operator-k8s.selectorLabels" -}}
app.kubernetes.io/name: {{ include "operator-k8s.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "operator-k8s.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "operator-k8s.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "operator-k8s.databaseSecret" -}}
{{- if .Values.postgres.enabled -}}
{{- printf "%s-postgres" (include "operator-k8s.fullname" .) -}}
{{- else -}}
{{- .Values.database.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The namespaced rules, used in a ClusterRole (cluster-wide) or a Role per watched namespace. */}}
{{- define "operator-k8s.namespacedRules" -}}
# Store pods: kopf's index of them is fed by a watch (list + watch); get: the one pod of a ticket that opens, read
# again for its evidence (container restarts, last termination).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Events on ticket transitions (opened, resolved, ...), posted on the MonitoredCluster; list: the Events about one
# store pod (selected by its name) when its ticket opens, as evidence.
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
# MonitoredClusters: watched; patched for kopf's finalizer and its last-handled annotation.
- apiGroups: [operator-k8s.io]
  resources: [monitoredclusters]
  verbs: [list, watch, patch]
# Their status: conditions, store counts, open tickets (read again only when a write conflicts).
- apiGroups: [operator-k8s.io]
  resources: [monitoredclusters/status]
  verbs: [get, patch]
# Tickets: the projection of Postgres, observed through the watch; created, patched (labels and status in one
# request: the CRD has no status subresource), removed after retention; a human's spec edit is folded into Postgres.
- apiGroups: [operator-k8s.io]
  resources: [tickets]
  verbs: [list, watch, create, patch, delete]
# MaintenanceWindows: observed through the watch (kopf's index of them, which the notification code reads); patched
# for the finalizer kopf puts on every object it runs a timer on.
- apiGroups: [operator-k8s.io]
  resources: [maintenancewindows]
  verbs: [list, watch, patch]
# Their status: active, until when, next start (written only where it differs from what the object shows).
- apiGroups: [operator-k8s.io]
  resources: [maintenancewindows/status]
  verbs: [patch]
# TiDB Operator's TidbClusters: read only, through kopf's watch (list + watch; get for completeness of a read-only
# grant), for the automatic maintenance window of a MonitoredCluster that names one (spec.maintenance.tidbCluster):
# status.tikv.phase and status.pd.phase. Harmless without TiDB Operator's CRD: nothing is watched until it appears.
- apiGroups: [pingcap.com]
  resources: [tidbclusters]
  verbs: [get, list, watch]
{{- if .Values.peering.enabled }}
# Peering between replicas (only with watchNamespaces: kopf uses a KopfPeering per namespace); get: a replica waits
# at start until the chart's peering object exists.
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}

{{/* Combinations of values the schema cannot compare: refused with what to change, before anything is installed. */}}
{{- define "operator-k8s.validate" -}}
{{- if eq (int .Values.metrics.port) (int .Values.health.port) }}
{{- fail (printf "metrics.port and health.port must differ (both are %v): the operator serves each on its own port" .Values.metrics.port) }}
{{- end }}
{{- if and .Values.postgres.enabled .Values.database.existingSecret }}
{{- fail (printf "database.existingSecret (%s) and postgres.enabled=true exclude each other: the quick-start Postgres brings its own DSN Secret; set one of them" .Values.database.existingSecret) }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled=true needs metrics.service.enabled=true: the ServiceMonitor selects that Service" }}
{{- end }}
{{- end }}
