{{/* Prefix of every object name. */}}
{{- define "seapath.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "seapath.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "seapath.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "seapath.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: seapath
{{- end -}}

{{/* Selector labels of one component: call with (dict "ctx" . "component" "controller"). */}}
{{- define "seapath.selectorLabels" -}}
app.kubernetes.io/name: {{ include "seapath.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "seapath.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "seapath.controllerServiceAccount" -}}
{{ include "seapath.fullname" . }}-controller
{{- end -}}

{{- define "seapath.agentServiceAccount" -}}
{{ include "seapath.fullname" . }}-agent
{{- end -}}

{{/* Ceph access through the mounted Secret of one role: include with (list . "controller")
or (list . "agent"). */}}
{{- define "seapath.cephEnv" -}}
{{- $root := index . 0 -}}
{{- $role := index $root.Values.ceph (index . 1) -}}
{{- if or (hasKey $root.Values.ceph "secretName") (hasKey $root.Values.ceph "client") -}}
{{- fail "ceph.secretName and ceph.client were replaced by one user and Secret per role: ceph.controller.{secretName,client} and ceph.agent.{secretName,client} (docs/operations.md, \"Ceph users\")" -}}
{{- end -}}
- name: CEPH_CONF
  value: /etc/seapath/ceph/ceph.conf
- name: SEAPATH_CEPH_KEYRING
  value: /etc/seapath/ceph/keyring
- name: SEAPATH_CEPH_CLIENT
  value: {{ required "ceph.<role>.client is required" $role.client | quote }}
- name: SEAPATH_CEPH_POOL
  value: {{ $root.Values.ceph.pool | quote }}
- name: SEAPATH_RBD_NAMESPACE_MAP
  value: {{ $root.Values.ceph.rbdNamespaceMap | quote }}
{{- with $root.Values.ceph.libvirtSecretUUID }}
- name: SEAPATH_LIBVIRT_SECRET_UUID
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Container security context shared by both components (the agent adds runAsUser 0). */}}
{{- define "seapath.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "seapath.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 20
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  periodSeconds: 10
{{- end -}}
