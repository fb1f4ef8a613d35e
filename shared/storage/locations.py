"""How a reader reaches a location: the abfss:// URI for Spark, deltalake's URI and storage options."""

from __future__ import annotations

from urllib.parse import urlparse

from shared.config.model import ConnectionSettings, LocationConfig


def abfss_uri(settings: ConnectionSettings, location: LocationConfig) -> str:
    """`abfss://<container>@<account>.dfs.<suffix>/<path>`: what Spark's ABFS driver opens.

    Emulators (path-style URLs such as Azurite) have no DFS host; the public-cloud form with
    the account name is returned so the URI still names the right account and folder.
    """
    host = urlparse(settings.blob_service_url).hostname or ""
    if ".blob." in host:
        dfs_host = host.replace(".blob.", ".dfs.", 1)
    else:
        dfs_host = f"{settings.account_name}.dfs.core.windows.net"
    return f"abfss://{location.container}@{dfs_host}/{location.path}"


def deltalake_uri(location: LocationConfig) -> str:
    return f"az://{location.container}/{location.path}"


def deltalake_options(settings: ConnectionSettings) -> dict[str, str]:
    """deltalake (object_store) options for a connection. Holds secrets: never log them.

    Account-key and SAS connection strings carry their credential; identity-based connections
    leave authentication to object_store's managed identity (with the configured client id).
    """
    options = {"account_name": settings.account_name}
    if settings.connection_string:
        parts = {}
        for piece in settings.connection_string.split(";"):
            key, sep, value = piece.partition("=")
            if sep:
                parts[key.strip().lower()] = value.strip()
        if parts.get("accountkey"):
            options["account_key"] = parts["accountkey"]
        elif parts.get("sharedaccesssignature"):
            options["sas_token"] = parts["sharedaccesssignature"]
    elif settings.client_id:
        options["client_id"] = settings.client_id
    parsed = urlparse(settings.blob_service_url)
    if not (parsed.hostname or "").endswith(".blob.core.windows.net"):
        options["azure_storage_endpoint"] = settings.blob_service_url
        if parsed.scheme == "http":
            options["allow_http"] = "true"
    return options
