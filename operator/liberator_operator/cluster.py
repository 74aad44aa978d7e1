"""The operator's Kubernetes API client: credentials, the server version, and small helpers."""

from __future__ import annotations

import base64
import re
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

__all__ = [
    "ApiException",
    "Cluster",
    "native_sidecars_supported",
]

NATIVE_SIDECAR_MINOR = 29
REQUEST_TIMEOUT = 10


def native_sidecars_supported(major: str, minor: str) -> bool:
    """Whether a server of this version runs native sidecars (GA-default since 1.29)."""
    digits = re.match(r"\d+", minor or "")
    try:
        major_n = int(major)
    except ValueError:
        return False
    return major_n > 1 or (
        major_n == 1 and digits is not None and int(digits.group()) >= NATIVE_SIDECAR_MINOR
    )


class Cluster:
    """Typed wrappers around the ``kubernetes`` client APIs the operator uses."""

    def __init__(self, api: client.ApiClient | None = None) -> None:
        if api is None:
            loader: Any = config
            try:
                loader.load_incluster_config()
            except config.ConfigException:
                loader.load_kube_config()
            api = client.ApiClient()
        # The client's generated stubs are partial; raw dicts in and out keep this module typed.
        self.api: Any = api
        self.core: Any = client.CoreV1Api(api)
        self.batch: Any = client.BatchV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.admission: Any = client.AdmissionregistrationV1Api(api)

    def version(self) -> tuple[str, str]:
        info = client.VersionApi(self.api).get_code(_request_timeout=REQUEST_TIMEOUT)
        return str(info.major), str(info.minor)

    def native_sidecars(self) -> bool:
        return native_sidecars_supported(*self.version())

    def list_custom(
        self, group: str, version: str, plural: str, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        if namespace is None:
            result = self.custom.list_cluster_custom_object(
                group, version, plural, _request_timeout=REQUEST_TIMEOUT
            )
        else:
            result = self.custom.list_namespaced_custom_object(
                group, version, namespace, plural, _request_timeout=REQUEST_TIMEOUT
            )
        return list(result.get("items") or [])

    def get_custom(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                group, version, namespace, plural, name, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def patch_custom_status(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str,
        name: str,
        *,
        status: dict[str, Any],
        resource_version: str,
    ) -> bool:
        """Merge ``status``, only if the object is still at ``resource_version``.

        Returns False on a conflict: another writer got there first, and the caller's view is
        stale, so it skips this round rather than overwrite newer conditions.
        """
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        try:
            self.custom.patch_namespaced_custom_object_status(
                group, version, namespace, plural, name, body, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    def _secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's (base64) data, or None when it does not exist."""
        try:
            secret = self.core.read_namespaced_secret(
                name, namespace, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(secret.data or {})

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """The decoded value, or None when the Secret or the key is missing."""
        data = self._secret_data(namespace, name)
        if data is None or key not in data:
            return None
        return base64.b64decode(data[key]).decode()

    def secret_keys(self, namespace: str, name: str) -> list[str] | None:
        """The Secret's keys, or None when it does not exist."""
        data = self._secret_data(namespace, name)
        return None if data is None else sorted(data)

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            job = self.batch.read_namespaced_job(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        result: dict[str, Any] = self.api.sanitize_for_serialization(job)
        return result

    def create_job(self, job: dict[str, Any]) -> bool:
        """Create ``job``; False when a Job of that name exists already."""
        try:
            self.batch.create_namespaced_job(
                job["metadata"]["namespace"], job, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        pods = self.core.list_namespaced_pod(
            namespace, label_selector=label_selector, _request_timeout=REQUEST_TIMEOUT
        )
        items: list[dict[str, Any]] = self.api.sanitize_for_serialization(pods).get("items") or []
        return items

    def pod_image(self, namespace: str, pod: str, container: str) -> str | None:
        """The image ``container`` of ``pod`` runs (a list by name: RBAC grants list only)."""
        pods = self.core.list_namespaced_pod(
            namespace, field_selector=f"metadata.name={pod}", _request_timeout=REQUEST_TIMEOUT
        )
        for item in pods.items:
            for spec in item.spec.containers:
                if spec.name == container:
                    return str(spec.image)
        return None

    def apply_webhook_configuration(self, body: dict[str, Any]) -> None:
        """Create or replace a MutatingWebhookConfiguration."""
        name = body["metadata"]["name"]
        try:
            current = self.admission.read_mutating_webhook_configuration(
                name, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.admission.create_mutating_webhook_configuration(
                body, _request_timeout=REQUEST_TIMEOUT
            )
            return
        body = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": current.metadata.resource_version},
        }
        self.admission.replace_mutating_webhook_configuration(
            name, body, _request_timeout=REQUEST_TIMEOUT
        )
