"""Consolidation: regional tables merged into a global table exactly once (txn bookkeeping), on Azurite."""

from __future__ import annotations

import pytest

from tests.support.regions import REGIONS, Regions, orders


@pytest.fixture
def regions(azurite, request):
    regions = Regions(azurite, request.node.name)
    yield regions
    regions.close()


def expected_keys(written: dict[str, set[int]]) -> list[tuple]:
    return sorted((region, i) for region, ids in written.items() for i in ids)


def test_interleaved_runs_hold_exactly_one_row_per_key_and_a_quiet_rerun_commits_nothing(regions):
    written = {r: set() for r in REGIONS}

    def write(region, ids):
        regions.write(region, orders(region, ids))
        written[region] |= set(ids)

    # Overlapping transaction ids across regions; ids repeated across commits and runs.
    for region in REGIONS:
        write(region, range(0, 10))
    first = regions.run()
    assert {s: o.status for s, o in first.items()} == {r: "up_to_date" for r in REGIONS}
    assert {s: o.rows_inserted for s, o in first.items()} == {r: 10 for r in REGIONS}
    write("eastus", range(5, 15))  # 5..9 again: already in the global table
    write("westeu", range(10, 12))
    write("westeu", range(11, 13))  # 11 twice within one run
    second = regions.run()
    assert second["eastus"].rows_inserted == 5 and second["westeu"].rows_inserted == 3
    assert second["seasia"].rows_inserted == 0 and second["seasia"].target_commits == 0
    write("seasia", range(0, 3))  # only duplicates
    third = regions.run()
    assert third["seasia"].rows_inserted == 0 and third["seasia"].target_commits == 1  # the txn alone
    assert regions.txn("seasia") == regions.table("seasia").version()
    assert regions.global_keys() == expected_keys(written)
    assert len(regions.global_keys()) == len(set(regions.global_keys()))

    version = regions.target_version()
    again = regions.run()
    assert regions.target_version() == version, "a run with nothing new committed something"
    assert all(o.rows_inserted == 0 and o.target_commits == 0 and o.commits_read == 0 for o in again.values())
    assert {r: regions.txn(r) for r in REGIONS} == {r: regions.table(r).version() for r in REGIONS}
    rows = {row.source: row for row in regions.status.list_rows(consolidation=regions.name)}
    assert {s: (r.last_merged_version, r.versions_behind, r.status) for s, r in rows.items()} == \
        {r: (regions.table(r).version(), 0, "up_to_date") for r in REGIONS}
