"""Paired differences between two readings of the same edits (two `records.json` written by `save_report`, e.g. the
demo's editor read with and without an edit option), intervals resampling the facts.

    python benchmarks/compare_records.py docs/results/demo/records.json.gz outputs/attempts/demo-preserve/records.json
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from demo_controls import compare

from hf_lime.evaluation import json_safe

METRICS = ("reliability", "transfer", "locality_same_relation", "locality_other", "edit_success",
           "hmean_same_relation")  # fmt: skip


def read_records(path: str) -> dict:
    """A records file, gzipped or not."""
    raw = Path(path).read_bytes()
    return json.loads(gzip.decompress(raw) if path.endswith(".gz") else raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline")
    parser.add_argument("candidate")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--json", default=None, help="Also write the differences here.")
    args = parser.parse_args()
    result = compare(read_records(args.candidate), read_records(args.baseline), args.bootstrap, METRICS)
    print(f"candidate − baseline, paired over the same edits ({args.candidate} − {args.baseline}):")
    for metric in METRICS:
        value = result[metric]
        low, high = value["ci"]
        print(f"  {metric:<24} baseline {value['baseline']:.3f}  candidate {value['candidate']:.3f}  "
              f"difference {value['difference']:+.3f} [{low:+.3f}, {high:+.3f}]")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(json_safe(result), indent=2) + "\n")


if __name__ == "__main__":
    main()
