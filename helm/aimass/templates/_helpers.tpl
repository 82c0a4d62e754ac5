{{/*
Names
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "aimass.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, suffixed with the chart name unless it already
contains it. Truncated so that component suffixes still fit the 63-character DNS limit.
*/}}
{{- define "aimass.fullname" -}}
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

{{/* Chart name and version, as used by the helm.sh/chart label. */}}
{{- define "aimass.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aimass.controlPlane.fullname" -}}
{{- printf "%s-control-plane" (include "aimass.fullname" .) }}
{{- end }}

{{- define "aimass.mlflow.fullname" -}}
{{- printf "%s-mlflow" (include "aimass.fullname" .) }}
{{- end }}

{{- define "aimass.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "aimass.fullname" .) }}
{{- end }}

{{/* The RayCluster for pipeline jobs. KubeRay derives its head Service name from it. */}}
{{- define "aimass.ray.clusterName" -}}
{{- printf "%s-ray" (include "aimass.fullname" .) }}
{{- end }}

{{/* The RayService; KubeRay names its Serve Service "<name>-serve-svc". */}}
{{- define "aimass.serving.name" -}}
{{- printf "%s-serve" (include "aimass.fullname" .) }}
{{- end }}

{{/*
Labels
*/}}

{{/* Selector labels: stable across upgrades, never add to them. */}}
{{- define "aimass.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aimass.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels of every object. */}}
{{- define "aimass.labels" -}}
helm.sh/chart: {{ include "aimass.chart" . }}
{{ include "aimass.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aimass
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of a component's objects. Usage: include "aimass.componentLabels" (dict "ctx" $ "component" "mlflow") */}}
{{- define "aimass.componentLabels" -}}
{{ include "aimass.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of a component's pods. */}}
{{- define "aimass.componentSelectorLabels" -}}
{{ include "aimass.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Service accounts
*/}}

{{- define "aimass.controlPlane.serviceAccountName" -}}
{{- if .Values.controlPlane.serviceAccount.create }}
{{- default (include "aimass.controlPlane.fullname" .) .Values.controlPlane.serviceAccount.name }}
{{- else }}
{{- required "controlPlane.serviceAccount.name is required when controlPlane.serviceAccount.create is false" .Values.controlPlane.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aimass.mlflow.serviceAccountName" -}}
{{- if .Values.mlflow.serviceAccount.create }}
{{- default (include "aimass.mlflow.fullname" .) .Values.mlflow.serviceAccount.name }}
{{- else }}
{{- required "mlflow.serviceAccount.name is required when mlflow.serviceAccount.create is false" .Values.mlflow.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aimass.ray.serviceAccountName" -}}
{{- if .Values.ray.serviceAccount.create }}
{{- default (include "aimass.ray.clusterName" .) .Values.ray.serviceAccount.name }}
{{- else }}
{{- required "ray.serviceAccount.name is required when ray.serviceAccount.create is false" .Values.ray.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Images
*/}}

{{- define "aimass.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "aimass.mlflow.image" -}}
{{- $repository := default .Values.image.repository .Values.mlflow.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.mlflow.image.tag }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{- define "aimass.ray.image" -}}
{{- $repository := default .Values.image.repository .Values.ray.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.ray.image.tag }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{- define "aimass.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
Security contexts: Pod Security "restricted", always on.
*/}}

{{/* Pod-level context. Usage: include "aimass.podSecurityContext" .Values.securityContext */}}
{{- define "aimass.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
fsGroup: {{ .fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level context. Usage: include "aimass.containerSecurityContext" .Values.securityContext */}}
{{- define "aimass.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Environment shared by every container running the aimass image. The root filesystem is
read-only, so everything aimass and its libraries write goes to the /tmp emptyDir.
*/}}
{{- define "aimass.writableHomeEnv" -}}
- name: HOME
  value: /tmp
- name: AIMASS_HOME
  value: /tmp/aimass
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
{{- end }}

{{/*
MLflow wiring
*/}}

{{/* In-cluster URL of the tracking server (AIMASS_TRACKING_URI). */}}
{{- define "aimass.mlflow.url" -}}
{{- printf "http://%s:%v" (include "aimass.mlflow.fullname" .) .Values.mlflow.service.port }}
{{- end }}

{{/* Secret with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD that MLflow clients log in with. */}}
{{- define "aimass.mlflow.clientSecretName" -}}
{{- required "mlflow.auth.clientExistingSecret is required when mlflow.auth.enabled: name an existing Secret with keys MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" .Values.mlflow.auth.clientExistingSecret }}
{{- end }}

{{/* Env of an MLflow client: the tracking URI and, with basic auth, its credentials. */}}
{{- define "aimass.mlflow.clientEnv" -}}
- name: AIMASS_TRACKING_URI
  value: {{ include "aimass.mlflow.url" . | quote }}
{{- if .Values.mlflow.auth.enabled }}
- name: MLFLOW_TRACKING_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "aimass.mlflow.clientSecretName" . }}
      key: MLFLOW_TRACKING_USERNAME
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "aimass.mlflow.clientSecretName" . }}
      key: MLFLOW_TRACKING_PASSWORD
{{- end }}
{{- end }}

{{/* Where pipelines store their outputs (the control plane forwards these settings to runs). */}}
{{- define "aimass.storageSettingsEnv" -}}
{{- with .Values.ray.storage.artifactRoot }}
- name: AIMASS_ARTIFACT_ROOT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.mlflow.artifacts.s3.endpoint }}
- name: AIMASS_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* Env of pipeline storage in Ray pods: the settings and, when configured, S3 credentials. */}}
{{- define "aimass.ray.storageEnv" -}}
{{- include "aimass.storageSettingsEnv" . }}
{{- with .Values.ray.storage.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- if .Values.ray.storage.artifactRoot }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.mlflow.artifacts.s3.region | quote }}
{{- end }}
{{- end }}

{{/*
Ray

The pod template of a Ray node (head or worker), used by the RayCluster and the RayService.
Usage: include "aimass.ray.podTemplate" (dict "ctx" $ "node" "head"|"worker" "group" <values>
       "gpus" <int> "serving" <bool> "instance" <name of the RayCluster or RayService>)
*/}}
{{- define "aimass.ray.podTemplate" -}}
{{- $ctx := .ctx }}
{{- $values := $ctx.Values }}
{{- $isHead := eq .node "head" -}}
metadata:
  {{- /* Stable labels only: a chart version bump must not make KubeRay replace a cluster. */}}
  labels:
    {{- include "aimass.componentSelectorLabels" (dict "ctx" $ctx "component" (ternary "ray-serving" "ray" .serving)) | nindent 4 }}
    app.kubernetes.io/part-of: aimass
    aimass.io/ray-instance: {{ .instance }}
    {{- with $values.commonLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .group.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "aimass.ray.serviceAccountName" $ctx }}
  {{- /* Only the head needs the API: the in-tree autoscaler sidecar scales the cluster. */}}
  automountServiceAccountToken: {{ $isHead }}
  {{- with include "aimass.imagePullSecrets" $ctx }}
  {{- . | trim | nindent 2 }}
  {{- end }}
  securityContext:
    {{- include "aimass.podSecurityContext" $values.securityContext | nindent 4 }}
  containers:
    - name: {{ ternary "ray-head" "ray-worker" $isHead }}
      image: {{ include "aimass.ray.image" $ctx }}
      imagePullPolicy: {{ $values.ray.image.pullPolicy }}
      securityContext:
        {{- include "aimass.containerSecurityContext" $values.securityContext | nindent 8 }}
      {{- if $isHead }}
      ports:
        - name: gcs-server
          containerPort: 6379
        - name: dashboard
          containerPort: 8265
        - name: client
          containerPort: 10001
        - name: metrics
          containerPort: 8080
        {{- if .serving }}
        - name: serve
          containerPort: 8000
        {{- end }}
      {{- else }}
      ports:
        - name: metrics
          containerPort: 8080
        {{- if .serving }}
        - name: serve
          containerPort: 8000
        {{- end }}
      {{- end }}
      env:
        {{- include "aimass.writableHomeEnv" $ctx | nindent 8 }}
        {{- include "aimass.mlflow.clientEnv" $ctx | nindent 8 }}
        {{- with include "aimass.ray.storageEnv" $ctx }}
        {{- . | trim | nindent 8 }}
        {{- end }}
        {{- if .serving }}
        - name: AIMASS_SERVE_TOKEN_FILE
          value: /var/run/aimass/serve-token/token
        {{- if $values.serving.highThroughput }}
        {{- /* Every node of the serving cluster needs both, before Ray starts. */}}
        - name: RAY_SERVE_ENABLE_HA_PROXY
          value: "1"
        - name: RAY_SERVE_THROUGHPUT_OPTIMIZED
          value: "1"
        {{- end }}
        {{- end }}
      resources:
        {{- $resources := deepCopy (default dict .group.resources) }}
        {{- if gt (int .gpus) 0 }}
        {{- $limits := merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $resources.limits) }}
        {{- $_ := set $resources "limits" $limits }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        - name: dshm
          mountPath: /dev/shm
        {{- if .serving }}
        - name: serve-token
          mountPath: /var/run/aimass/serve-token
          readOnly: true
        {{- end }}
  volumes:
    - name: tmp
      emptyDir: {}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $values.ray.sharedMemorySize }}
    {{- if .serving }}
    - name: serve-token
      secret:
        secretName: {{ required "serving.auth.existingSecret is required when serving.enabled: name an existing Secret with the serving bearer token under key `token`" $values.serving.auth.existingSecret }}
        defaultMode: 0440
        items:
          - key: token
            path: token
    {{- end }}
  {{- with .group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .group.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .group.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
The RayClusterSpec shared by the RayCluster and the RayService's rayClusterConfig.
Usage: include "aimass.ray.clusterSpec" (dict "ctx" $ "serving" <bool> "instance" <name>)
*/}}
{{- define "aimass.ray.clusterSpec" -}}
{{- $ctx := .ctx }}
{{- $ray := $ctx.Values.ray -}}
rayVersion: {{ $ray.version | quote }}
{{- if $ray.auth.enabled }}
authOptions:
  mode: token
  {{- with $ray.auth.existingSecret }}
  secretName: {{ . }}
  {{- end }}
{{- end }}
enableInTreeAutoscaling: true
autoscalerOptions:
  upscalingMode: {{ $ray.autoscaler.upscalingMode }}
  idleTimeoutSeconds: {{ $ray.autoscaler.idleTimeoutSeconds }}
  imagePullPolicy: {{ $ray.image.pullPolicy }}
  env:
    - name: HOME
      value: /tmp
  resources:
    {{- toYaml $ray.autoscaler.resources | nindent 4 }}
  securityContext:
    {{- include "aimass.containerSecurityContext" $ctx.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
headGroupSpec:
  # ClusterIP only: the dashboard, Jobs API and GCS never leave the cluster.
  serviceType: ClusterIP
  enableIngress: false
  {{- $headParams := dict "dashboard-host" "0.0.0.0" }}
  {{- range $key, $value := $ray.head.rayStartParams }}
  {{- $_ := set $headParams $key (toString $value) }}
  {{- end }}
  rayStartParams:
    {{- toYaml $headParams | nindent 4 }}
  template:
    {{- include "aimass.ray.podTemplate" (dict "ctx" $ctx "node" "head" "group" $ray.head "gpus" 0 "serving" .serving "instance" .instance) | nindent 4 }}
workerGroupSpecs:
  {{- $groups := list }}
  {{- if .serving }}
  {{- $groups = append $groups (dict "group" $ctx.Values.serving.workers "gpus" $ctx.Values.serving.workers.gpusPerWorker) }}
  {{- else }}
  {{- $groups = append $groups (dict "group" $ray.workers "gpus" 0) }}
  {{- if $ray.gpuWorkers.enabled }}
  {{- $groups = append $groups (dict "group" $ray.gpuWorkers "gpus" $ray.gpuWorkers.gpusPerWorker) }}
  {{- end }}
  {{- end }}
  {{- range $groups }}
  - groupName: {{ .group.groupName }}
    replicas: {{ .group.replicas }}
    minReplicas: {{ .group.minReplicas }}
    maxReplicas: {{ .group.maxReplicas }}
    {{- $params := dict }}
    {{- if gt (int .gpus) 0 }}
    {{- $_ := set $params "num-gpus" (toString .gpus) }}
    {{- end }}
    {{- range $key, $value := .group.rayStartParams }}
    {{- $_ := set $params $key (toString $value) }}
    {{- end }}
    {{- if $params }}
    rayStartParams:
      {{- toYaml $params | nindent 6 }}
    {{- else }}
    rayStartParams: {}
    {{- end }}
    template:
      {{- include "aimass.ray.podTemplate" (dict "ctx" $ctx "node" "worker" "group" .group "gpus" .gpus "serving" $.serving "instance" $.instance) | nindent 6 }}
  {{- end }}
{{- end }}

{{/*
Ingress of one component.
Usage: include "aimass.ingress" (dict "ctx" $ "component" "mlflow" "name" <object name>
       "values" <ingress values> "service" <Service name> "port" <port name or number>)
*/}}
{{- define "aimass.ingress" -}}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ .name }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "aimass.componentLabels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
  {{- with .values.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with .values.className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- with .values.tlsSecretName }}
  tls:
    - hosts:
        - {{ $.values.host | quote }}
      secretName: {{ . }}
  {{- end }}
  rules:
    - host: {{ .values.host | quote }}
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service:
                name: {{ .service }}
                port:
                  {{- if kindIs "string" .port }}
                  name: {{ .port }}
                  {{- else }}
                  number: {{ .port }}
                  {{- end }}
{{- end }}

{{/*
PostgreSQL
*/}}

{{/* Secret holding the bundled database's password: yours, or the one the chart generates. */}}
{{- define "aimass.postgresql.secretName" -}}
{{- default (include "aimass.postgresql.fullname" .) .Values.postgresql.auth.existingSecret }}
{{- end }}

{{- define "aimass.postgresql.secretKey" -}}
{{- if .Values.postgresql.auth.existingSecret }}
{{- .Values.postgresql.auth.existingSecretKey }}
{{- else -}}
password
{{- end }}
{{- end }}

{{/*
MLFLOW_BACKEND_STORE_URI: the DSN from your Secret, or one assembled for the bundled database
(Kubernetes expands $(POSTGRES_PASSWORD) when the container starts; the spec holds no secret).
*/}}
{{- define "aimass.mlflow.backendStoreEnv" -}}
{{- if .Values.postgresql.enabled }}
- name: POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "aimass.postgresql.secretName" . }}
      key: {{ include "aimass.postgresql.secretKey" . }}
- name: MLFLOW_BACKEND_STORE_URI
  value: {{ printf "postgresql://%s:$(POSTGRES_PASSWORD)@%s:5432/%s" .Values.postgresql.auth.username (include "aimass.postgresql.fullname" .) .Values.postgresql.auth.database | quote }}
{{- else }}
- name: MLFLOW_BACKEND_STORE_URI
  valueFrom:
    secretKeyRef:
      name: {{ required "mlflow.backendStore.existingSecret is required when postgresql.enabled is false: name an existing Secret holding the PostgreSQL DSN (postgresql://user:password@host:5432/db)" .Values.mlflow.backendStore.existingSecret }}
      key: {{ .Values.mlflow.backendStore.existingSecretKey }}
{{- end }}
{{- end }}

{{/*
NetworkPolicy egress rule to external peers on TCP ports; no peers means any address.
Usage: include "aimass.networkPolicy.egressRule" .Values.networkPolicy.s3
*/}}
{{- define "aimass.networkPolicy.egressRule" -}}
- ports:
    {{- range .ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
