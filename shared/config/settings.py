"""The only reader of the environment: the configuration document, connections, status, alerts, telemetry."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from urllib.parse import urlparse

from shared.config.model import (
    AlertSettings,
    ConnectionSettings,
    ReplicationConfig,
    TableServiceSettings,
)
from shared.config.parse import parse_config
from shared.config.tuning import TUNING_SETTING, Tuning, parse_tuning
from shared.errors import ConfigError

CONFIG_SETTING = "REPLICATION_CONFIG"
CONFIG_FILE_SETTING = "REPLICATION_CONFIG_FILE"

# What "UseDevelopmentStorage=true" means: Azurite's well-known account on its default ports.
DEVELOPMENT_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)

# Proxy variables requests honours. Without any, clients stop "trusting the environment":
# requests would otherwise stat and read ~/.netrc on every request (storage never
# authenticates by netrc), a measurable share of each request's CPU.
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")
# The CA bundles requests takes from the environment (a private CA), in its order.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def transport_options(environ: Mapping[str, str] | None = None) -> dict:
    """Options for every storage client's HTTP transport: environment settings only when a proxy is
    set. A CA bundle alone is passed as `connection_verify`: trusting the environment would make
    requests resolve proxies and netrc from it on every request (measured: 10 scans of the environment
    per replicated commit, the largest single item of the SDK's CPU profile; bench/cpu_results.md)."""
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in PROXY_VARIABLES):
        return {}
    bundle = next((env[name] for name in CA_BUNDLE_VARIABLES if env.get(name)), None)
    return {"use_env_settings": False, **({"connection_verify": bundle} if bundle else {})}


def object_client_options(environ: Mapping[str, str] | None = None, *, scheme: str = "https") -> dict:
    """The same environment for obstore's client (it reads none itself): the proxy for the endpoint's
    scheme, as requests picks it (HTTPS_PROXY for https, HTTP_PROXY for http, then ALL_PROXY), with
    NO_PROXY's exclusions, and a CA bundle file's certificates as extra trusted roots."""
    env = os.environ if environ is None else environ
    options: dict = {}
    names = (f"{scheme.upper()}_PROXY", f"{scheme.lower()}_proxy", "ALL_PROXY", "all_proxy")
    proxy = next((env[name] for name in names if env.get(name)), None)
    if proxy:
        options["proxy_url"] = proxy
        excludes = env.get("NO_PROXY") or env.get("no_proxy")
        if excludes:
            options["proxy_excludes"] = excludes
    bundle = next((env[name] for name in CA_BUNDLE_VARIABLES if env.get(name)), None)
    if bundle and os.path.isfile(bundle):
        with open(bundle, encoding="utf-8") as fh:
            options["root_certificate"] = fh.read()
    return options


def load_config(environ: Mapping[str, str] | None = None) -> ReplicationConfig:
    """Load and validate the configuration named by the environment.

    Args:
        environ: the settings (default `os.environ`).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: neither or both settings are set, the file is unreadable, or the JSON is
            invalid; the message names every bad field.
    """
    env = os.environ if environ is None else environ
    inline = env.get(CONFIG_SETTING, "").strip()
    path = env.get(CONFIG_FILE_SETTING, "").strip()
    if inline and path:
        raise ConfigError(
            f"both {CONFIG_SETTING} and {CONFIG_FILE_SETTING} are set; set only one of them"
        )
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as err:
            raise ConfigError(
                f"{CONFIG_FILE_SETTING}: cannot read {path!r} ({err.strerror}); "
                "point it at a readable JSON file"
            ) from err
        source = f"{CONFIG_FILE_SETTING} ({path})"
    elif inline:
        text, source = inline, CONFIG_SETTING
    else:
        raise ConfigError(
            f"no replication configuration: set {CONFIG_SETTING} to the JSON configuration "
            f"or {CONFIG_FILE_SETTING} to the path of a JSON file (see README, Configuration)"
        )
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{source} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from err
    return parse_config(raw)


def load_tuning(environ: Mapping[str, str] | None = None) -> Tuning:
    """Batch and pool sizes and the invocation deadline: REPLICATION_TUNING, else the defaults.

    Raises:
        ConfigError: the setting is not a JSON object of known names with valid values.
    """
    env = os.environ if environ is None else environ
    return parse_tuning(env.get(TUNING_SETTING))


def resolve_connection(name: str, environ: Mapping[str, str] | None = None) -> ConnectionSettings:
    """Resolve a connection name the way Azure Functions does.

    `<NAME>` holds a connection string (account key or SAS; Azurite included), or
    `<NAME>__blobServiceUri` (alias `<NAME>__serviceUri`) selects identity-based access, with
    optional `<NAME>__credential` = managedidentity and `<NAME>__clientId`.

    Raises:
        ConfigError: nothing is defined under the name, or the value is malformed. The
            message names the setting, never its value.
    """
    env = os.environ if environ is None else environ
    value = env.get(name, "").strip()
    uri = (env.get(f"{name}__blobServiceUri") or env.get(f"{name}__serviceUri") or "").strip()
    if value:
        return _from_connection_string(name, value)
    if uri:
        parsed = urlparse(uri)
        if parsed.scheme not in ("https", "http") or not parsed.netloc or parsed.query:
            raise ConfigError(
                f"setting {name}__blobServiceUri is not a blob service URL like "
                "https://<account>.blob.core.windows.net (no query string)"
            )
        account = _account_from_url(parsed)
        credential = (env.get(f"{name}__credential") or "").strip().lower() or None
        if credential not in (None, "managedidentity"):
            raise ConfigError(f"setting {name}__credential must be 'managedidentity' or unset")
        return ConnectionSettings(
            name=name,
            account_name=account,
            blob_service_url=uri.rstrip("/"),
            credential_kind=credential,
            client_id=(env.get(f"{name}__clientId") or "").strip() or None,
        )
    raise ConfigError(
        f"connection {name}: setting {name} is not defined; set it to a storage connection "
        f"string or set {name}__blobServiceUri for identity-based access"
    )


def _account_from_url(parsed) -> str:
    host = parsed.hostname or ""
    if host in ("127.0.0.1", "localhost") or host.replace(".", "").isdigit():
        # Azurite and other emulators are path-style: /<account>
        return parsed.path.strip("/").split("/")[0]
    return host.split(".")[0]


def connection_string_parts(name: str, value: str) -> dict[str, str]:
    """A storage connection string's Key=Value pairs, keys lower-cased (secret values: never log them).

    Raises:
        ConfigError: not Key=Value pairs separated by ';' (names the setting, never its value).
    """
    if value == "UseDevelopmentStorage=true":
        value = DEVELOPMENT_STORAGE
    parts: dict[str, str] = {}
    for piece in value.split(";"):
        if not piece.strip():
            continue
        key, sep, val = piece.partition("=")
        if not sep:
            raise ConfigError(
                f"setting {name} is not a storage connection string (expected Key=Value pairs "
                "separated by ';')"
            )
        parts[key.strip().lower()] = val.strip()
    return parts


def _from_connection_string(name: str, value: str) -> ConnectionSettings:
    if value == "UseDevelopmentStorage=true":
        value = DEVELOPMENT_STORAGE
    parts = connection_string_parts(name, value)
    account = parts.get("accountname")
    endpoint = parts.get("blobendpoint")
    if endpoint:
        parsed = urlparse(endpoint)
        if not parsed.scheme or not parsed.netloc:
            raise ConfigError(f"setting {name}: BlobEndpoint is not a URL")
        account = account or _account_from_url(parsed)
        url = endpoint.rstrip("/")
    elif account:
        protocol = parts.get("defaultendpointsprotocol", "https")
        suffix = parts.get("endpointsuffix", "core.windows.net")
        url = f"{protocol}://{account}.blob.{suffix}"
    else:
        raise ConfigError(
            f"setting {name} is not a storage connection string: it has neither AccountName nor BlobEndpoint"
        )
    if not (parts.get("accountkey") or parts.get("sharedaccesssignature")):
        raise ConfigError(
            f"setting {name} has no AccountKey or SharedAccessSignature; use {name}__blobServiceUri "
            "for identity-based access instead"
        )
    return ConnectionSettings(name=name, account_name=account, blob_service_url=url, connection_string=value)


STATUS_CONNECTION_SETTING = "STATUS_CONNECTION"
DEFAULT_STATUS_CONNECTION = "AzureWebJobsStorage"
ALERT_ENDPOINT_SETTING = "ALERT_TOPIC_ENDPOINT"
ALERT_KEY_SETTING = "ALERT_TOPIC_KEY"


def resolve_status_connection(environ: Mapping[str, str] | None = None) -> TableServiceSettings:
    """STATUS_CONNECTION (default AzureWebJobsStorage): a connection string, or
    `<NAME>__tableServiceUri` for identity-based access.

    Raises:
        ConfigError: the named connection is not defined.
    """
    env = os.environ if environ is None else environ
    name = (env.get(STATUS_CONNECTION_SETTING) or DEFAULT_STATUS_CONNECTION).strip()
    value = (env.get(name) or "").strip()
    if value == "UseDevelopmentStorage=true":
        value = DEVELOPMENT_STORAGE
    if value:
        return TableServiceSettings(name=name, connection_string=value)
    uri = (env.get(f"{name}__tableServiceUri") or "").strip()
    if uri:
        return TableServiceSettings(name=name, endpoint=uri.rstrip("/"))
    raise ConfigError(
        f"{STATUS_CONNECTION_SETTING}: setting {name} is not defined; set it to a storage connection "
        f"string or set {name}__tableServiceUri for identity-based access"
    )


def resolve_host_storage(environ: Mapping[str, str] | None = None) -> ConnectionSettings:
    """The function app's own storage account for blobs (leases): STATUS_CONNECTION, default AzureWebJobsStorage.

    Raises:
        ConfigError: the named connection is not defined; the message names the setting.
    """
    env = os.environ if environ is None else environ
    name = (env.get(STATUS_CONNECTION_SETTING) or DEFAULT_STATUS_CONNECTION).strip()
    try:
        return resolve_connection(name, env)
    except ConfigError as err:
        raise ConfigError(
            f"{STATUS_CONNECTION_SETTING}: the function app's storage holds replication leases and status; {err}"
        ) from err


def resolve_alerts(environ: Mapping[str, str] | None = None) -> AlertSettings | None:
    """ALERT_TOPIC_ENDPOINT (+ ALERT_TOPIC_KEY, or identity); None when alerts are off."""
    env = os.environ if environ is None else environ
    endpoint = (env.get(ALERT_ENDPOINT_SETTING) or "").strip()
    if not endpoint:
        return None
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("https", "http") or not parsed.netloc or parsed.query:
        raise ConfigError(f"{ALERT_ENDPOINT_SETTING} must be an Event Grid topic URL without a query string")
    return AlertSettings(endpoint=endpoint, key=(env.get(ALERT_KEY_SETTING) or "").strip() or None)


TELEMETRY_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"


def resolve_telemetry(environ: Mapping[str, str] | None = None) -> str | None:
    """The Application Insights connection string (secret), or None: metrics are then not exported."""
    env = os.environ if environ is None else environ
    return (env.get(TELEMETRY_SETTING) or "").strip() or None


STORAGE_CLIENT_SETTING = "STORAGE_CLIENT"
STORAGE_CLIENTS = ("obstore", "sdk")


def resolve_storage_client(environ: Mapping[str, str] | None = None) -> str:
    """STORAGE_CLIENT: "obstore" (the default: the hot path on Rust object_store, a tenth of the CPU per
    request) or "sdk" (everything through azure-storage-blob, the fallback).

    Raises:
        ConfigError: any other value.
    """
    env = os.environ if environ is None else environ
    value = (env.get(STORAGE_CLIENT_SETTING) or "").strip().lower() or STORAGE_CLIENTS[0]
    if value not in STORAGE_CLIENTS:
        raise ConfigError(f"{STORAGE_CLIENT_SETTING} must be 'obstore' or 'sdk' (unset: obstore); "
                          f"it is {value[:20]!r}")
    return value
