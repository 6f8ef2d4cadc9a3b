"""EMQX 5 REST API client (``/api/v5``): basic auth with an API key and secret, JSON bodies.

Error shape, from EMQX's management API (emqx_dashboard_swagger error codes):
``{"code": "ALREADY_INSTALLED", "message": "..."}`` with 400/403/404; a wrong key or secret
gives 401 ``BAD_API_KEY_OR_SECRET``. ``ApiError`` keeps status, code and message so the adapter
can tell "not found" from a refusal; every message names what was asked and never the secret.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import urllib3

from sidecar.adapters.base import AdapterError, BrokerUnavailable


class ApiError(AdapterError):
    """EMQX refused a request; ``code`` is its error code (``NOT_FOUND``, ``BAD_CONFIG``...)."""

    def __init__(self, text: str, status: int, code: str, message: str) -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.message = message


class EmqxApi:
    def __init__(self, base_url: str, key: str, secret: str, *, key_source: str,
                 timeout: float = 30.0, ca_file: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()
        self._key_source = key_source  # named in errors; key and secret never are
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout), retries=False,
            ca_certs=ca_file)
        self.calls = 0
        self.log: list[str] = []  # "METHOD /path" of every call, for tests and debugging

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def put(self, path: str, body: Any = None) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        return self._send(method, path, payload, "application/json" if payload else None)

    def _send(self, method: str, path: str, payload: bytes | None,
              content_type: str | None) -> Any:
        what = f"{method} /api/v5{path}"
        headers = {"Authorization": self._auth, "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        self.calls += 1
        self.log.append(what)
        try:
            response = self._http.request(method, f"{self.base_url}/api/v5{path}",
                                          body=payload, headers=headers)
        except urllib3.exceptions.HTTPError as e:
            reason = getattr(e, "reason", None) or e
            raise BrokerUnavailable(f"EMQX API at {self.base_url} did not answer {what}: "
                                    f"{reason}") from e
        text = response.data.decode("utf-8", "replace")
        if 200 <= response.status < 300:
            if not text.strip():
                return None
            try:
                return json.loads(text)
            except ValueError:
                return text  # e.g. text/plain answers
        code, message = _error_fields(text)
        if response.status == 401:
            raise ApiError(f"EMQX refused the API key/secret from {self._key_source} (HTTP 401 "
                           f"{code or 'Unauthorized'} on {what}): expected an API key created "
                           "in EMQX (dashboard, `emqx ctl` or api_key.bootstrap_file) with its "
                           "secret; fix the Secret", 401, code, message)
        if response.status in (502, 503, 504):
            raise BrokerUnavailable(f"EMQX API answered {response.status} to {what}")
        raise ApiError(f"EMQX refused {what} (HTTP {response.status} {code}): "
                       f"{message or text[:300] or 'empty body'}", response.status, code,
                       message)


def _error_fields(text: str) -> tuple[str, str]:
    try:
        data = json.loads(text)
    except ValueError:
        return "", text.strip()[:300]
    if not isinstance(data, dict):
        return "", text.strip()[:300]
    message = data.get("message", "")
    if not isinstance(message, str):
        message = json.dumps(message)
    return str(data.get("code", "")), message
