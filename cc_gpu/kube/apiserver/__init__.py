"""The API-server double: resource.k8s.io/v1, core/v1 and node.k8s.io/v1 over real HTTP+JSON, validated like 1.37.

Where no kube-apiserver can run, tests, benchmarks and `cc-gpu demo` use this double; it speaks the real wire
format so the driver's production client (`cc_gpu.kube.client.KubernetesApi`) talks to it unchanged. Split by
concern: `resources` (the served types), `store` (objects and write semantics), `validation`, `patches`,
`selectors`, `status` (error replies), `handler` (HTTP routing) and `server` (lifecycle, kubeconfig, audit).
"""

from cc_gpu.kube.apiserver.server import ApiServerDouble, AuditEntry

__all__ = ["ApiServerDouble", "AuditEntry"]
