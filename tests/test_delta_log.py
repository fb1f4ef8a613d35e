import pytest

from shared.delta.log import (
    LogFileKind,
    TableRoot,
    commit_name,
    deletion_vector_path,
    parse_commit,
    parse_log_name,
    referenced_files,
)
from shared.errors import CommitIncomplete, InvalidCommit

ROOT = TableRoot("eastus", "lake", "delta/sales")


@pytest.mark.parametrize("name, kind, version", [
    ("00000000000000000042.json", LogFileKind.COMMIT, 42),
    ("00000000000000000010.checkpoint.parquet", LogFileKind.CHECKPOINT, 10),
    ("00000000000000000010.checkpoint.0000000001.0000000003.parquet", LogFileKind.CHECKPOINT_PART, 10),
    ("00000000000000000010.checkpoint.80a083e8-7026-4e79-81be-64bd76c43a11.json", LogFileKind.CHECKPOINT_V2, 10),
    ("00000000000000000010.checkpoint.80a083e8-7026-4e79-81be-64bd76c43a11.parquet", LogFileKind.CHECKPOINT_V2, 10),
    ("00000000000000000010.crc", LogFileKind.CRC, 10),
    ("_last_checkpoint", LogFileKind.LAST_CHECKPOINT, None),
    ("_sidecars/3a0d65cd-4056-49b8-937b-95f9e3ee90e5.parquet", LogFileKind.SIDECAR, None),
])
def test_log_names_are_classified(name, kind, version):
    lf = parse_log_name(name)
    assert (lf.kind, lf.version) == (kind, version)


@pytest.mark.parametrize("name", [
    ".00000000000000000042.json.1f2e.tmp", "00000000000000000042.json.tmp", "42.json",
    ".tmp/00000000000000000042.json", "00000000000000000010.checkpoint.0000000004.0000000003.parquet",
    "00000000000000000001.00000000000000000009.compacted.json",
])
def test_temporary_hidden_and_unknown_names_are_not_replicable(name):
    assert parse_log_name(name) is None


def test_commit_name_pads_to_twenty_digits_and_rejects_negative():
    assert commit_name(7) == "00000000000000000007.json"
    with pytest.raises(ValueError):
        commit_name(-1)


def test_deletion_vector_files_follow_the_protocol_examples():
    assert deletion_vector_path({"storageType": "u", "pathOrInlineDv": "ab^-aqEH.-t@S}K{vb[*k^"}) == \
        "ab/deletion_vector_d2c639aa-8816-431a-aaf6-d3fe2512ff61.bin"
    assert deletion_vector_path({"storageType": "u", "pathOrInlineDv": "vBn[lx{q8@P<9BNH/isA"}) == \
        "deletion_vector_61d16c75-6994-46b7-a15b-8b538852e50e.bin"
    assert deletion_vector_path({"storageType": "i", "pathOrInlineDv": "wi5b=000010000siXQKl0rr91000f55c8Xg0@@D72lkbi5=-{L"}) is None


def test_referenced_files_decode_paths_and_include_cdc_and_deletion_vectors():
    actions = [
        {"add": {"path": "region=50%25%20off/a%3Db/part-1.parquet", "size": 10,
                 "deletionVector": {"storageType": "u", "pathOrInlineDv": "ab^-aqEH.-t@S}K{vb[*k^"}}},
        {"add": {"path": "region=m%C3%BCnchen/part-2.parquet", "size": 11}},
        {"cdc": {"path": "_change_data/part-3.parquet", "size": 12}},
        {"add": {"path": "abfss://lake@eastus.dfs.core.windows.net/delta/sales/abs/part-4.parquet", "size": 13}},
        {"remove": {"path": "old.parquet"}},
    ]
    files = {f.path: f.size for f in referenced_files(actions, ROOT, allow_external=False, where="t")}
    assert files == {
        "region=50% off/a=b/part-1.parquet": 10,
        "ab/deletion_vector_d2c639aa-8816-431a-aaf6-d3fe2512ff61.bin": None,
        "region=münchen/part-2.parquet": 11,
        "_change_data/part-3.parquet": 12,
        "abs/part-4.parquet": 13,
    }


@pytest.mark.parametrize("path", [
    "../other/part.parquet", "a/%2E%2E/%2E%2E/x.parquet", "/etc/passwd", "a//b.parquet",
    "_delta_log/00000000000000000099.json", "a\\..\\b",
])
def test_paths_escaping_the_table_or_into_the_log_are_refused(path):
    with pytest.raises(InvalidCommit, match="not a file inside the table"):
        referenced_files([{"add": {"path": path}}], ROOT, allow_external=False, where="t")


def test_external_absolute_urls_are_refused_unless_allowed():
    action = [{"add": {"path": "abfss://lake@otheraccount.dfs.core.windows.net/delta/sales/x.parquet"}}]
    with pytest.raises(InvalidCommit, match="outside the table"):
        referenced_files(action, ROOT, allow_external=False, where="t")
    assert referenced_files(action, ROOT, allow_external=True, where="t") == []


@pytest.mark.parametrize("data", [b"", b"   \n", b'{"add": {"path": "x"', b"\xff\xfe", b"[1,2]"])
def test_empty_or_unparseable_commits_are_incomplete_and_retryable(data):
    with pytest.raises(CommitIncomplete) as info:
        parse_commit(data, where="v1")
    assert info.value.retryable
