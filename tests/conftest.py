"""Run-wide Azurite and per-test lakes: a primary and two replicas in unique containers."""

from __future__ import annotations

import logging
import os
import signal
import threading

import pytest

from devtools.azurite import AZURITE_BLOB_BIN, AzuriteProcess, stop_all
from tests.support.lake import Lake

ACCOUNTS = ("eastus", "westeu", "seasia", "global")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the long randomized fault-injection tests (marked slow)")


def _stop_azurite_and_exit(signum, frame):
    stop_all()
    os._exit(24)  # what mutmut reads as "timeout"


def pytest_configure(config):
    # scripts/mutation.sh: mutmut ends a mutant's test process that overran with SIGXCPU, where no
    # fixture teardown runs; stop this process's Azurite first so none is left behind.
    if threading.current_thread() is threading.main_thread():  # xdist may configure in another thread
        signal.signal(signal.SIGXCPU, _stop_azurite_and_exit)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long randomized run: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def azurite():
    """One Azurite for the run, started on a free port and stopped at the end."""
    if os.environ.get("TEST_AZURITE"):
        # scripts/mutation.sh: one Azurite serves every mutant's session (each test's containers
        # and tables are uniquely named); starting one per session was most of a mutant's time.
        proc = AzuriteProcess.attach(ACCOUNTS, os.environ["TEST_AZURITE"])
    else:
        if not AZURITE_BLOB_BIN.exists():
            pytest.exit(f"Azurite is missing ({AZURITE_BLOB_BIN}); run `npm ci` or use scripts/test.sh", returncode=2)
        proc = AzuriteProcess(ACCOUNTS, with_table=True)
        try:
            proc.start()
        except RuntimeError as err:
            pytest.exit(f"cannot start Azurite: {err}", returncode=2)
    # As in a deployment that has run before: the topology table exists, so a test that stops a
    # region never meets the missing-table check (markers.py; tests/test_topology_missing.py has it).
    from azure.data.tables import TableServiceClient

    with TableServiceClient.from_connection_string(proc.connection_string("devstoreaccount1")) as tables:
        tables.create_table_if_not_exists("ReplicationTopology")
    yield proc
    proc.close()


@pytest.fixture
def second_azurite():
    """A separate Azurite process (another 'region') holding the seasia account."""
    proc = AzuriteProcess(("seasia",)).start()
    yield proc
    proc.close()


@pytest.fixture
def lake(azurite, request):
    lake = Lake(azurite, request.node.name)
    yield lake
    lake.close()


@pytest.fixture
def captured_logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog
