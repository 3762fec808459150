"""Summarise a recipe's `vggfeat svm eval --json` results beside the paper's Table 11.

    python recipes/table11.py caltech101 OUT_DIR/results_*.json

Each file name must end in `results_<nets>[_split<k>].json` (as the recipes write them); splits
of one net set are averaged (mean ± std, as the paper reports Caltech).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

# Simonyan & Zisserman (2014), Table 11: VOC mAP and Caltech mean class recall, in %.
TABLE_11 = {
    "voc2007": {"D": "89.3", "E": "89.3", "DE": "89.7"},
    "voc2012": {"D": "89.0", "E": "89.0", "DE": "89.3"},
    "caltech101": {"D": "91.8 ± 1.0", "E": "92.3 ± 0.5", "DE": "92.7 ± 0.5"},
    "caltech256": {"D": "85.0 ± 0.2", "E": "85.1 ± 0.3", "DE": "86.2 ± 0.3"},
}


def score(result: dict) -> float:
    """The headline number of one eval result, in %."""
    value = result["mAP"] if result["task"] == "multilabel" else result["mean_class_recall"]
    return 100 * value


def main(protocol: str, paths: list[str]) -> None:
    groups: dict[str, list[float]] = defaultdict(list)
    for path in paths:
        match = re.search(r"results_([A-Z]+)(?:_split\d+)?\.json$", Path(path).name)
        if match:
            groups[match.group(1)].append(score(json.loads(Path(path).read_text())))
    paper = TABLE_11[protocol]
    print(f"{'nets':<6}{'ours':>16}{'paper':>16}   ({protocol}; splits)")
    for nets, values in sorted(groups.items(), key=lambda kv: len(kv[0])):
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        ours = f"{statistics.mean(values):.1f}{spread}"
        print(f"{nets:<6}{ours:>16}{paper.get(nets, '-'):>16}   ({len(values)})")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in TABLE_11:
        sys.exit(f"usage: table11.py {{{','.join(TABLE_11)}}} RESULTS.json ...")
    main(sys.argv[1], sys.argv[2:])
