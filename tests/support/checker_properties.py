"""The properties the randomized failover checker asserts, from the checker's own direct view.

After every step (`Observer.observe`):
  (b) a location holds, at version v, a commit written elsewhere only if the promotion history
      assigns it there: above the latest promotion, a commit the current primary wrote in the
      current epoch; at or below a promotion at P, the commit the promoted location held at v
      when it was promoted (a forced promote adopts the log of the location it promotes), and so
      on back through the history. Checked when a commit appears at a location, against the
      history at that moment; a location's own writes are exempt (rejoin quarantines them);
  (d) every blob of the container lies under the table root, a quarantine or the snapshots.
After each routed read (`check_read`):
  (e) the reader got the version it asked for, with the rows the primary has at that version.
At the end (`final_checks`), after healing, rejoining every location and replaying:
  (a) every acknowledged append's rows are in the final primary (once) or in a quarantine;
  (c) every location's commits are byte-identical to the primary's.
"""

from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

import pyarrow.parquet as pq
from deltalake import DeltaTable

from tests.support.checker_world import LOCATIONS, QUARANTINE_PREFIX, SNAPSHOT_PATH, TABLE_PATH, Origin, World

LOG_PREFIX = f"{TABLE_PATH}/_delta_log/"


def commit_version(name: str) -> int | None:
    """Version of a `<table>/_delta_log/<20 digits>.json` blob name, else None."""
    if not name.startswith(LOG_PREFIX):
        return None
    base = name[len(LOG_PREFIX):]
    return int(base[:20]) if len(base) == 25 and base.endswith(".json") and base[:20].isdigit() else None


class Observer:
    """Remembers what each location held at each version and checks every change."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.held: dict[tuple[str, int], str] = {}  # (location, version) -> digest
        self.bytes_by_etag: dict[tuple[str, str, str], bytes] = {}
        self.origin_of: dict[str, Origin] = {}  # digest -> origin
        self.violations: list[str] = []
        self.promoted: dict[int, dict[int, str]] = {}  # epoch -> its primary's log (digests) up to the promotion
        self.listing: dict[str, dict[str, str]] = {}  # location -> every blob name -> ETag, at the last observation
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="observer")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def commits(self, account: str, listing: dict[str, str] | None = None) -> dict[int, bytes]:
        """Every commit of a location's table: version -> bytes (fetched once per ETag)."""
        w = self.world
        cc = w.truth[account].get_container_client(w.container)
        if listing is None:
            listing = {b.name: b.etag for b in cc.list_blobs(name_starts_with=LOG_PREFIX)}
        out = {}
        for name, etag in listing.items():
            v = commit_version(name)
            if v is None:
                continue
            key = (account, name, etag)
            if key not in self.bytes_by_etag:
                try:
                    self.bytes_by_etag[key] = cc.get_blob_client(name).download_blob().readall()
                except Exception:  # noqa: BLE001 - removed between listing and read (rejoin)
                    continue
            out[v] = self.bytes_by_etag[key]
        return out

    def heads(self) -> dict[str, int | None]:
        """Each location's newest commit at the last observation."""
        return {a: max((v for n in names if (v := commit_version(n)) is not None), default=None)
                for a, names in self.listing.items()}

    def _origin(self, digest: str, data: bytes, seen_at: list[str]) -> Origin:
        if digest in self.origin_of:
            return self.origin_of[digest]
        w = self.world
        info = {}
        for line in data.decode(errors="replace").splitlines():
            try:
                action = json.loads(line)
            except ValueError:
                continue
            if isinstance(action, dict) and isinstance(action.get("commitInfo"), dict):
                info = action["commitInfo"]
        tag = info.get("checker")
        if isinstance(tag, str) and tag in w.origins:
            origin = w.origins[tag]
        elif "replayedFrom" in info:  # replay commits on the primary of the epoch it ran in
            origin = Origin(w.primary, w.epoch, f"replay {info['replayedFrom']}")
        else:  # written by the system itself (a fence): where it was first seen
            where = w.primary if w.primary in seen_at else seen_at[0]
            origin = Origin(where, w.epoch, f"{info.get('operation', '?')} first seen on {','.join(seen_at)}")
        self.origin_of[digest] = origin
        return origin

    def observe(self, step: str) -> None:
        w = self.world
        history = self._pool.submit(w.sync_history)

        def listing(account):
            names = {b.name: b.etag for b in w.truth[account].get_container_client(w.container).list_blobs()}
            return names, self.commits(account, names)
        listings = dict(zip(LOCATIONS, self._pool.map(listing, LOCATIONS)))
        history.result()
        now: dict[tuple[str, int], tuple[str, bytes]] = {}
        for account, (names, commits) in listings.items():
            self.listing[account] = names
            for v, data in commits.items():
                now[(account, v)] = (hashlib.md5(data).hexdigest(), data)  # noqa: S324 - identity, not security
            self._check_blob_names(account, names, step)
        for epoch, primary, at in w.history:
            if epoch not in self.promoted:  # the new primary's log up to the promotion is the lineage now
                self.promoted[epoch] = {v: d for (a, v), (d, _) in now.items() if a == primary and v <= at}
        fresh = {k: d for k, (d, _) in now.items() if self.held.get(k) != d}
        for (account, v), digest in sorted(fresh.items(), key=lambda kv: kv[0][1]):
            seen_at = sorted(a for (a, ver), d in fresh.items() if ver == v and d == digest)
            origin = self._origin(digest, now[(account, v)][1], seen_at)
            if account == origin.location:
                continue  # a location's own writes: rejoin quarantines them
            ok, lineage = self.assigned(v, digest, origin)
            if not ok:
                self.violations.append(
                    f"(b) after {step}: {account} holds at version {v} commit {origin.tag} written on "
                    f"{origin.location} at epoch {origin.epoch}; the promotion history {w.history} assigns "
                    f"version {v} to {lineage}")
        self.held = {k: d for k, (d, _) in now.items()}

    def assigned(self, version: int, digest: str, origin: Origin) -> tuple[bool, str]:
        """Whether a commit belongs at `version` by the promotion history: above the latest
        promotion only what that epoch's primary wrote in that epoch; at or below it, what the
        promoted location held there when it was promoted (a forced promote adopts its log)."""
        for epoch, primary, at in reversed(self.world.history):
            if version > at:
                return (origin.location == primary and origin.epoch == epoch,
                        f"epoch {epoch}: commits {primary} wrote in that epoch")
            held = self.promoted.get(epoch, {})
            if version in held:
                return digest == held[version], f"the commit {primary} held there when promoted at epoch {epoch}"
        return False, "no epoch"

    def _check_blob_names(self, account: str, names, step: str) -> None:
        allowed = (f"{TABLE_PATH}/", QUARANTINE_PREFIX, f"{SNAPSHOT_PATH}/")
        stray = sorted(n for n in names if not n.startswith(allowed))
        if stray:
            self.violations.append(f"(d) after {step}: {account} holds blobs outside the table root, quarantines "
                                   f"and snapshots: {stray[:5]}")


def table_ids(world: World, account: str, version: int | None = None) -> list[int]:
    dt = DeltaTable(world.uri(), version=version, storage_options=world.options(account))
    return sorted(dt.to_pyarrow_table(columns=["id"]).column("id").to_pylist())


def check_read(world: World, resolution, asked: int | None) -> list[str]:
    """(e): the routed reader's version and rows against the primary's at that version."""
    where = f"read routed to {resolution.location} at version {resolution.version} (asked {asked})"
    if asked is not None and resolution.version != asked:
        return [f"(e) {where}: not the version asked for"]
    try:
        got = table_ids(world, resolution.location, resolution.version)
    except Exception as err:  # noqa: BLE001 - a routed version that does not read is a violation
        return [f"(e) {where}: the read failed: {type(err).__name__}: {str(err)[:200]}"]
    primary_head = world.head(world.primary)
    if resolution.version is None or primary_head is None or resolution.version > primary_head:
        return [f"(e) {where}: the primary {world.primary} is at {primary_head}"]
    try:
        want = table_ids(world, world.primary, resolution.version)
    except Exception:  # noqa: BLE001 - the primary cannot tell; nothing to compare with
        return []
    if got != want:
        return [f"(e) {where}: rows differ from the primary {world.primary}'s at that version "
                f"(extra {sorted(set(got) - set(want))[:8]}, missing {sorted(set(want) - set(got))[:8]})"]
    return []


def quarantined_ids(world: World) -> dict[int, list[tuple[str, bool]]]:
    """Row ids in every quarantine of every location (read from the quarantined files), each with
    where it is and whether its commit is a blind append (which replay is to apply)."""
    from shared.failover.replay import classify

    found: dict[int, list[tuple[str, bool]]] = {}
    for account in LOCATIONS:
        cc = world.truth[account].get_container_client(world.container)
        for blob in cc.list_blobs(name_starts_with=QUARANTINE_PREFIX):
            if not blob.name.endswith("/quarantine.json"):
                continue
            root = blob.name.rsplit("/", 1)[0]
            manifest = json.loads(cc.get_blob_client(blob.name).download_blob().readall())
            for v in manifest.get("versions", []):
                try:
                    data = cc.get_blob_client(f"{root}/_delta_log/{v:020d}.json").download_blob().readall()
                except Exception:  # noqa: BLE001 - a manifest naming a missing commit: its rows count as lost
                    continue
                actions = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
                blind = classify(account, 0, v, actions).blind_append
                for add in (a["add"] for a in actions if "add" in a):
                    try:
                        raw = cc.get_blob_client(f"{root}/{unquote(add['path'])}").download_blob().readall()
                    except Exception:  # noqa: BLE001
                        continue
                    for i in pq.read_table(io.BytesIO(raw), columns=["id"]).column("id").to_pylist():
                        found.setdefault(i, []).append((f"{account}:{root.rsplit('/', 1)[1]}:v{v}", blind))
    return found


def final_checks(world: World, observer: Observer) -> list[str]:
    """(a) and (c), on a healed, rejoined and replayed world."""
    violations = []
    primary = world.primary
    reference = observer.commits(primary)
    for account in LOCATIONS:
        if account == primary:
            continue
        mine = observer.commits(account)
        differ = sorted(v for v in set(mine) | set(reference) if mine.get(v) != reference.get(v))
        if differ:
            violations.append(f"(c) {account} did not converge with the primary {primary}: versions {differ[:10]} "
                              f"differ (heads {max(mine, default=None)} vs {max(reference, default=None)})")
    try:
        in_primary = table_ids(world, primary)
    except Exception as err:  # noqa: BLE001
        return violations + [f"(a) the final primary {primary} does not read: {type(err).__name__}: {err}"]
    counts: dict[int, int] = {}
    for i in in_primary:
        counts[i] = counts.get(i, 0) + 1
    quarantined = quarantined_ids(world)
    for tag, ids in sorted(world.acked.items()):
        lost = [i for i in ids if i not in counts and i not in quarantined]
        if lost:
            violations.append(f"(a) acknowledged commit {tag} (written on {world.origins[tag].location} at epoch "
                              f"{world.origins[tag].epoch}) lost rows {lost}: in neither the primary nor a quarantine")
        # Quarantined rows count when a person must decide; blind appends have been replayed by now.
        stranded = [i for i in ids if i not in counts and i in quarantined and all(b for _, b in quarantined[i])]
        if stranded:
            places = sorted({where for i in stranded for where, _ in quarantined[i]})
            violations.append(f"(a) acknowledged commit {tag}: rows {stranded} are only in quarantined blind appends "
                              f"{places}, which the final replay did not apply")
        twice = [i for i in ids if counts.get(i, 0) > 1]
        if twice:
            violations.append(f"(a) acknowledged commit {tag}: rows {twice} are in the primary more than once")
    return violations
