"""How deltalake reaches a configured location: an az:// URI and object_store options.

The options carry the account key or SAS of the connection: never log them.
"""

from __future__ import annotations

from shared.config.model import ConnectionSettings, LocationConfig


def deltalake_uri(location: LocationConfig) -> str:
    """`az://<container>/<path>`: the account comes from the options."""
    return f"az://{location.container}/{location.path}"


def deltalake_options(settings: ConnectionSettings) -> dict[str, str]:
    """object_store options for one connection (secret: account key or SAS when the connection has one)."""
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
    if not settings.blob_service_url.endswith(".blob.core.windows.net"):
        # Azurite and other emulators: path-style endpoint, usually plain HTTP.
        options["azure_storage_endpoint"] = settings.blob_service_url
        options["allow_http"] = "true"
    return options
