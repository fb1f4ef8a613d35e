"""Regions going away mid-burst: a replica's or the primary's Azurite process stopped and restarted."""

from __future__ import annotations

import random

from devtools.azurite import AzuriteProcess
from shared import failpoints
from tests.support.lake import Lake, batch


def test_replica_region_flapping_during_a_burst_loses_nothing(azurite, second_azurite, request):
    lake = Lake(azurite, request.node.name, replica_process=second_azurite)
    rng = random.Random(17)
    flaps = 0
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        delivered = set()
        for i in range(1, 31):
            lake.write(batch(i * 5, 5), partition_by=["region"])
            if i % 10 == 0:
                lake.table().create_checkpoint()
            if rng.random() < 0.25:
                second_azurite.stop() if second_azurite.running else second_azurite.start()
                flaps += 1
            for event in lake.events():
                if event["subject"] not in delivered:
                    delivered.add(event["subject"])
                    result = lake.deliver(event)
                    for outcome in result.outcomes:
                        assert outcome.error is None or outcome.retryable, outcome.error
            assert lake.head("westeu") == lake.head("eastus"), "the healthy replica was held back"
        if not second_azurite.running:
            second_azurite.start()
        lake.deliver(lake.events()[-1])  # Event Grid's redelivery of the last event
        assert flaps >= 3
        lake.assert_replicas_equal(every_version=True)
    finally:
        if not second_azurite.running:
            second_azurite.start()
        lake.close()


def test_primary_region_stopped_while_replicating_then_everything_converges(azurite, request):
    primary = AzuriteProcess(("eastus",)).start()
    lake = Lake(azurite, request.node.name, primary_process=primary)
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        for i in range(1, 25):
            lake.write(batch(i * 5, 5), partition_by=["region"])
        events = lake.events()
        # The primary's region goes down in the middle of a multi-version catch-up: right
        # after the third commit reaches a replica (a failpoint, not a timer).
        failpoints.arm(failpoints.COMMIT_AFTER, after=3, action=primary.stop)
        outcomes = []
        try:
            for event in events:
                outcomes += lake.deliver(event).outcomes
                if sum(o.error is not None for o in outcomes) >= 6:
                    break  # the outage is established; Event Grid would keep retrying
        finally:
            failpoints.disarm_all()
        assert not primary.running
        failed = [o for o in outcomes if o.error is not None]
        assert failed and all(o.retryable for o in failed)
        primary.start()
        lake.deliver(events[-1])
        lake.assert_replicas_equal(every_version=True)
    finally:
        lake.close()
        primary.close()
