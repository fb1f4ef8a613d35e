"""The resolver never routes a version into a hole of a location's history (issue 20, case 6).

A replica whose backfill was interrupted holds versions with a commit missing between them; a
reader of a version whose chain (the commits from its checkpoint, or from version 0, up to it)
crosses that hole gets an error from its Delta reader, so the resolver must send it elsewhere.
"""

from __future__ import annotations

import pytest

from shared.errors import NoReadableLocation
from shared.app.open_table import open_table
from shared.reads.resolver import SkipReason, resolve_location
from tests.support.lake import Lake, batch, rows


@pytest.fixture
def holed(azurite, request):
    """Primary at 11 with a checkpoint at 8; seasia holds every version but commit 5 (an interrupted
    backfill below its readable run); readers try seasia first, then the primary."""
    lake = Lake(azurite, request.node.name,
                table_overrides={"routing": {"default": ["seasia", "primary"]}})
    lake.write(batch(0, 3), mode="overwrite")
    for i in range(1, 12):
        lake.write(batch(i * 3, 3))
        if i == 8:
            lake.table().create_checkpoint()
    results = lake.deliver_all(lake.events())
    assert all(o.error is None for r in results for o in r.outcomes)
    lake.clients["seasia"].get_blob_client(lake.container, f"{lake.table_path}/_delta_log/{5:020d}.json").delete_blob()
    yield lake
    lake.close()


@pytest.mark.parametrize("version, where", [
    (4, "seasia"),  # commits 0..4 are there
    (5, "primary"),  # the hole itself
    (6, "primary"),  # its chain needs commit 5 (no checkpoint between 5 and 6)
    (7, "primary"),
    (8, "seasia"),  # the checkpoint at 8 makes 8.. readable without commit 5
    (11, "seasia"),
])
def test_a_version_behind_a_hole_is_routed_to_a_location_that_reads_it(holed, version, where):
    config = holed.runtime.config.tables[0]
    found = resolve_location(holed.runtime, config, version=version)
    assert (found.location, found.version) == (where, version)
    if where == "primary":
        (skipped,) = found.tried
        assert (skipped.location, skipped.reason) == ("seasia", SkipReason.VERSION_UNAVAILABLE)
        assert skipped.detail.startswith(f"version {version} does not read here: commit 5 is missing")
    got = open_table(config.name, version=version, runtime=holed.runtime)
    assert rows(got.to_pyarrow_table()) == rows(holed.table("eastus", version).to_pyarrow_table())


def test_with_no_location_reading_the_version_the_answer_names_the_hole(holed):
    from shared.config.parse import parse_config
    from shared.runtime import ReplicationRuntime

    doc = {"tables": [{**holed.config_doc["tables"][0], "routing": {"default": ["seasia"]}}]}
    runtime = ReplicationRuntime(parse_config(doc), holed.environ)
    try:
        with pytest.raises(NoReadableLocation) as err:
            resolve_location(runtime, runtime.config.tables[0], version=6)
        assert [(t.location, t.reason) for t in err.value.tried] == [("seasia", SkipReason.VERSION_UNAVAILABLE)]
        assert "commit 5 is missing" in str(err.value)
    finally:
        runtime.close()
