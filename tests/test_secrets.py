"""Keys, SAS tokens and connection strings never reach logs, errors or outcomes; the copy SAS is narrow."""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from devtools.azurite import account_key
from shared.config.parse import parse_config
from shared.errors import ConfigError
from shared.runtime import ReplicationRuntime
from tests.support.lake import Lake, batch, build_rich_table


def secrets_of(lake: Lake) -> list[str]:
    values = list(lake.environ.values())
    return values + [account_key(a) for a in ("eastus", "westeu", "seasia")]


def assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text
    assert not re.search(r"AccountKey=[^;<\s]", text)
    assert not re.search(r"[?&]sig=(?!REDACTED)[^&\s'\"]+", text)


def test_nothing_secret_in_logs_errors_or_outcomes(azurite, second_azurite, request, caplog):
    caplog.set_level(logging.DEBUG)  # everything, the storage SDK's request logging included
    lake = Lake(azurite, request.node.name, replica_process=second_azurite)
    collected: list[str] = []
    try:
        build_rich_table(lake, appends=4)
        results = lake.deliver_all(lake.events())  # seasia streams from another process
        collected += [repr(r) for r in results]
        second_azurite.stop()
        lake.write(batch(900, 5), partition_by=["region"])
        results = lake.deliver_all(lake.events()[-1:])
        unreachable = [o for r in results for o in r.outcomes if o.error is not None]
        assert unreachable, "expected the stopped replica to fail"
        collected += [repr(o) + str(o.error) + repr(o.error) + str(o.error.__cause__) for o in unreachable]
        for name in ("WESTEU_STORAGE", "SEASIA_STORAGE"):
            env = dict(lake.environ)
            env[name] = env[name].replace("AccountName=", "Acount=").replace("BlobEndpoint=", "Endpoint=")
            with pytest.raises(ConfigError) as info:
                ReplicationRuntime(parse_config(lake.config_doc), env)
            collected.append(str(info.value))
    finally:
        second_azurite.start() if not second_azurite.running else None
        lake.close()
    text = "\n".join(collected) + "\n" + caplog.text
    assert "copy.streaming" in caplog.text  # the logs did cover the copy paths
    assert_no_secret(text, secrets_of(lake))


def test_server_side_copy_sas_is_read_only_one_blob_and_short_lived(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    source = lake.runtime.replicators["sales"].source_store
    path = next(n for n in lake.blobs("eastus") if n.endswith(".parquet")).split(f"{lake.table_path}/", 1)[1]
    url = urlparse(source.signed_read_url(path))
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["sp"] == "r"  # read only
    assert query["sr"] == "b"  # one blob
    assert unquote(url.path) == f"/eastus/{lake.container}/{lake.table_path}/{path}"
    expiry = datetime.fromisoformat(query["se"].replace("Z", "+00:00"))
    assert timedelta(0) < expiry - datetime.now(timezone.utc) <= timedelta(minutes=10, seconds=5)
