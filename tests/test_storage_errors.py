"""Storage errors are classified once: 401/403 are not retried and say what to grant; throttling and 5xx
are retried. A refused replica is status `error` with an alert."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from devtools.azurite import account_key
from shared.errors import AccessDenied, ReplicaUnreachable
from shared.health.lag import ReplicaHealth
from shared.app.lag_check import check_replication
from shared.health.status import StatusStore
from shared.replication.outcome import ReplicaState
from shared.storage.blob_table_store import BlobTableStore
from tests.support.lake import batch


def wrong_key_connection(lake, account: str) -> str:
    return lake.environ[f"{account.upper()}_STORAGE"].replace(account_key(account), account_key("someone-else"))


def test_a_wrong_key_is_access_denied_naming_the_connection_and_the_role_and_is_not_retried(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.environ["SEASIA_STORAGE"] = wrong_key_connection(lake, "seasia")
    result = lake.deliver(lake.events()[0])
    by = {o.replica: o for o in result.outcomes}
    assert by["westeu"].state == ReplicaState.REPLICATED
    seasia = by["seasia"]
    assert seasia.state == ReplicaState.ERROR and type(seasia.error) is AccessDenied and not seasia.retryable
    message = str(seasia.error)
    assert "HTTP 403" in message and "connection SEASIA_STORAGE" in message
    assert "lack Storage Blob Data Reader" in message and "az role assignment create" in message  # listing failed
    assert seasia.error.hint and seasia.error.hint in message
    assert account_key("someone-else") not in message
    assert result.retryable_failures == []  # Event Grid is not asked to redeliver


def test_access_denied_on_a_replica_is_status_error_with_an_alert(lake):
    from shared.health.alerts import REPLICATION_FAILED
    from tests.support.alert_sink import AlertSink

    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.environ["SEASIA_STORAGE"] = wrong_key_connection(lake, "seasia")
    with AlertSink() as sink:
        lake.environ["ALERT_TOPIC_ENDPOINT"] = sink.endpoint
        lake.environ["ALERT_TOPIC_KEY"] = "test-key"
        runtime = lake.runtime
        status = StatusStore(TableServiceClient.from_connection_string(lake.environ["AzureWebJobsStorage"]),
                             table_name=lake.status_table)
        lags = {lag.replica: lag for lag in check_replication(runtime, status, runtime.alert_publisher())}
        assert lags["seasia"].status == ReplicaHealth.ERROR and "SEASIA_STORAGE" in lags["seasia"].detail
        assert lags["westeu"].status == ReplicaHealth.HEALTHY
        assert [(e["eventType"], e["subject"]) for e in sink.events] == \
            [(REPLICATION_FAILED, "tables/sales/replicas/seasia")]
        check_replication(runtime, status, runtime.alert_publisher())
        assert len(sink.events) == 1  # once per transition


class _Answer(BaseHTTPRequestHandler):
    status = 503

    def _reply(self):
        self.send_response(self.status)
        self.send_header("x-ms-error-code", "ServerBusy" if self.status == 503 else "TooManyRequests")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_HEAD = _reply

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttling_and_server_errors_are_retryable(status):
    handler = type("Answer", (_Answer,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/eastus"
        service = BlobServiceClient(url, credential={"account_name": "eastus", "account_key": account_key("eastus")},
                                    retry_total=0)
        store = BlobTableStore(service, "lake", "delta/sales", label="primary", connection_name="EASTUS_STORAGE")
        with pytest.raises(ReplicaUnreachable) as info:
            store.list_log("")
        assert info.value.retryable and f"HTTP {status}" in str(info.value)
    finally:
        server.shutdown()
        server.server_close()
