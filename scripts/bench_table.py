"""Prints run/bench/results.json as a Markdown table (used by scripts/bench.sh)."""
import json
import sys

rows = json.load(open(sys.argv[1]))
print("| stream | btrfs-to-s3 MiB/s | peak RSS MiB (limit) | s5cmd defaults MiB/s | RSS MiB | s5cmd -c4 -p8 MiB/s | RSS MiB |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    print("| {} GiB | {} | {} ({}) | {} | {} | {} | {} |".format(
        r["stream_gib"], r["tool_mib_s"], r["tool_peak_rss_mib"], r["memory_limit_mib"],
        r["s5cmd_default_mib_s"], r["s5cmd_default_peak_rss_mib"],
        r["s5cmd_c4_p8_mib_s"], r["s5cmd_c4_p8_peak_rss_mib"]))
