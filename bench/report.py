"""Render bench/RESULTS.md from bench/out/results.json (python -m bench.report)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def main() -> None:
    r = json.loads((HERE / "out" / "results.json").read_text())
    shutil.copy(HERE / "out" / "per_commit.png", HERE / "per_commit.png")
    t, m, peers = r["targets"], r["machine"], r["scaling"]["peers"]
    sizes = sorted(peers, key=int)
    lines = [
        "# Benchmark results",
        "",
        f"Run on {m['date']}: {m['platform']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, Python {m['python']}; "
        "Azurite 3.37.0 on loopback (one process per region where noted). Reproduce with `bash bench/run.sh`; "
        "raw figures in `bench/out/results.json` after a run.",
        "",
        "## Per-commit time against table size",
        "",
        "Median of the measured commits at each size (time from event delivery until the replica is readable at "
        "that version; for the alternatives, the time of their step after the same commit).",
        "",
        "| table size (commits) | this project | floor (SDK copy, no logic) | rclone sync | full rewrite (deltalake) "
        "| CDF + MERGE (deltalake) | storage requests / commit (this project) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sizes:
        p = peers[s]
        lines.append(f"| {p['table_versions']:.0f} | {p['project'] * 1000:.1f} ms | {p['floor'] * 1000:.1f} ms | "
                     f"{p['rclone_sync'] * 1000:.0f} ms | {p['full_rewrite'] * 1000:.0f} ms | "
                     f"{p['cdf_merge'] * 1000:.0f} ms | {p['requests']:.0f} |")
    seed, mem, sus = r["seeding"], r["memory"], r["sustained"]
    lines += [
        "",
        "![per-commit time](per_commit.png)",
        "",
        "## Other measurements",
        "",
        f"- Seeding an empty replica of the largest table: {seed['files']} files, {seed['bytes'] / 1e6:.2f} MB in "
        f"{seed['seconds']:.2f} s ({seed['files_per_s']:.0f} files/s, {seed['mb_per_s']:.2f} MB/s); rclone copy of "
        f"the same table: {seed['rclone_seconds']:.2f} s ({seed['rclone_files_per_s']:.0f} files/s).",
        f"- Bytes copied / bytes the commits added (data files + commit JSON): {t['bytes_copied_over_added']:.2f}.",
        f"- Streaming copy of a {mem['bytes'] / 2**20:.0f} MiB file between two Azurite processes: peak RSS "
        f"{mem['peak_mib']:.0f} MiB, {t['stream_memory_above_baseline_mib']:.0f} MiB above the "
        f"{mem['baseline_mib']:.0f} MiB baseline, {mem['bytes'] / 2**20 / mem['seconds']:.0f} MiB/s.",
        f"- Sustained load, {sus['seconds']:.0f} s, writer aiming at {sus['target_rate']:.0f} commits/s, two replicas "
        f"(one in a second Azurite process), each event delivered as it happened by 4 workers: "
        f"{sus['commits']} commits ({sus['achieved_rate']:.1f}/s achieved by the deltalake writer), commit-to-replica "
        f"lag p50 {sus['p50_lag'] * 1000:.0f} ms, p99 {sus['p99_lag'] * 1000:.0f} ms, max {sus['max_lag'] * 1000:.0f} ms; "
        f"{sus['not_replicated']} commits not replicated at the end; kept up: {'yes' if sus['kept_up'] else 'no'}.",
        "",
        "## Targets",
        "",
        "| target | figure | |",
        "|---|---:|---|",
        f"| per-commit time at {sizes[-1]} / at {sizes[0]} commits <= 1.3 (rclone's grows) | "
        f"{t['per_commit_large_over_small']:.2f} (rclone {t['rclone_large_over_small']:.2f}) | "
        f"{verdict(t['per_commit_large_over_small'] <= 1.3)} |",
        f"| per-commit latency <= 1.5x the floor | {t['project_over_floor_at_large']:.2f}x | "
        f"{verdict(t['project_over_floor_at_large'] <= 1.5)} |",
        f"| seeding at least as fast as rclone | {t['seeding_over_rclone_speed']:.2f}x rclone's speed | "
        f"{verdict(t['seeding_over_rclone_speed'] >= 1.0)} |",
        f"| bytes copied / bytes added = 1.00 | {t['bytes_copied_over_added']:.2f} | "
        f"{verdict(abs(t['bytes_copied_over_added'] - 1) < 0.005)} |",
        f"| streaming memory <= 64 MiB above baseline | {t['stream_memory_above_baseline_mib']:.0f} MiB | "
        f"{verdict(t['stream_memory_above_baseline_mib'] <= 64)} |",
        f"| sustained p99 commit-to-replica lag <= 1 s | {t['sustained_p99_lag_s'] * 1000:.0f} ms | "
        f"{verdict(t['sustained_p99_lag_s'] <= 1.0)} |",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
