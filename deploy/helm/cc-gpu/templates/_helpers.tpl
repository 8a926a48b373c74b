{{/* Names and labels shared by every template. */}}
{{- define "cc-gpu.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cc-gpu.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cc-gpu.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: kubelet-plugin
{{- end -}}

{{- define "cc-gpu.serviceAccountName" -}}
{{- printf "%s-kubelet-plugin" (include "cc-gpu.fullname" .) -}}
{{- end -}}

{{- define "cc-gpu.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The cc-gpu device class names as a CEL list literal. */}}
{{- define "cc-gpu.deviceClassList" -}}
{{- list .Values.deviceClasses.vfio.name .Values.deviceClasses.attested.name | toJson -}}
{{- end -}}

{{/* A CEL clause: the device's node offers iommufd (the plugin's iommuFD attribute), as confidential guests need. */}}
{{- define "cc-gpu.iommufdSelector" -}}
"iommuFD" in device.attributes[{{ .Values.driverName | quote }}] &&
device.attributes[{{ .Values.driverName | quote }}].iommuFD == true
{{- end }}

{{/*
The version part of a token key id <node>.k<version>: the same pattern as KEY_VERSION_PATTERN in
cc_gpu/attest/binding.py (a test renders the chart and compares them).
*/}}
{{- define "cc-gpu.keyVersionPattern" -}}
[1-9][0-9]{0,8}
{{- end }}

{{/* The guest path's verification service: the chart's own when enabled, else the admin's external one. */}}
{{- define "cc-gpu.guestServiceUrl" -}}
{{- if .Values.attestationService.enabled -}}
{{- printf "https://%s-attestation.%s.svc:%d" (include "cc-gpu.fullname" .) .Release.Namespace (int .Values.attestationService.service.port) -}}
{{- else -}}
{{- .Values.attestation.guestService.url -}}
{{- end -}}
{{- end }}

{{- define "cc-gpu.guestServiceCaConfigMap" -}}
{{- if .Values.attestationService.enabled -}}
{{- printf "%s-attestation-ca" (include "cc-gpu.fullname" .) -}}
{{- else -}}
{{- .Values.attestation.guestService.caConfigMap -}}
{{- end -}}
{{- end }}

{{/* Where the plugin reads the guest service's CA (a ConfigMap mounted read-only). */}}
{{- define "cc-gpu.guestServiceCaDir" -}}
/etc/cc-gpu-service-ca
{{- end }}
