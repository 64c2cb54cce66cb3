"""`custom_dataset` of the lm-eval fixture task: the OLMES fixture's ARC-Easy documents as an lm-eval dataset."""

import gzip
import json
from pathlib import Path

FILE = Path(__file__).resolve().parents[1] / "olmes" / "arc_easy" / "rc_0shot" / "requests.jsonl.gz"


def arc_easy(**_):
    import datasets

    docs = {}
    with gzip.open(FILE, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] < 1_000_000:
                docs.setdefault(r["doc_id"], r["doc"])
    rows = [{"query": d["query"], "choices": d["choices"], "gold": d["gold"]} for _, d in sorted(docs.items())]
    return {"test": datasets.Dataset.from_list(rows)}
