from shared.delta.source_log import complete_checkpoints, window_prefixes
from shared.storage.table_store import LogEntry


def entries(*names):
    return [LogEntry(n, 1) for n in names]


def test_multi_part_checkpoint_counts_only_with_every_part():
    partial = entries("00000000000000000010.checkpoint.0000000001.0000000002.parquet", "00000000000000000010.json")
    assert complete_checkpoints(partial) == {}
    full = partial + entries("00000000000000000010.checkpoint.0000000002.0000000002.parquet")
    assert complete_checkpoints(full) == {10: ["00000000000000000010.checkpoint.0000000001.0000000002.parquet",
                                               "00000000000000000010.checkpoint.0000000002.0000000002.parquet"]}


def test_classic_and_v2_checkpoints_are_complete_alone():
    found = complete_checkpoints(entries("00000000000000000020.checkpoint.parquet",
                                         "00000000000000000030.checkpoint.80a083e8-7026-4e79-81be-64bd76c43a11.json"))
    assert set(found) == {20, 30}


def test_listing_windows_stay_small_across_decimal_boundaries():
    assert window_prefixes(999, 1000) == ["0000000000000000099", "0000000000000000100"]
    assert window_prefixes(41, 42) == ["0000000000000000004"]
    # A long catch-up lists in a few coarse windows, never the whole log at once.
    assert window_prefixes(5, 2500) == ["00000000000000000", "00000000000000001", "00000000000000002"]
