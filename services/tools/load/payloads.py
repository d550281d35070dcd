"""Request bodies for load: records from each model's test split, as clients send them.

Pools are built once per process from data/split/<key>/test.parquet (the DVC outputs; in
compose and k8s the trainer's volume, mounted read-only), so every request is a real row:
single records, batches, entity keys for Feast-backed models, and malformed bodies whose
one wrong field the service must name in a 400. A search's queries are the first sentence
of held-out reviews: people search with a phrase, not with a whole review.
"""

import random
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from contract import paths
from contract.catalog import ModelSpec, load_catalog
from services.api.inputs import encodes_text
from services.tools.examples import as_entities, as_records

POOL_ROWS = 500  # rows read per model: enough variety, quick to load
# A model's requests in the paced mix of the rated capacity (`make load`), relative to most
# models' (1): a service of photos (an encoded picture up to 1000x1000, a tile ~50 table
# rows of CPU) is asked a tenth as often, aerial surveys coming by the tile, not by the
# click. The mix sets the stack's total rating only: a model's CPU per request and its HPA
# target do not depend on it
PHOTO_SHARE = 0.1
# A speech service's (a recording of up to 30 s, 0.6-1.1 s of a core to transcribe, 7-12 of
# the detector's tiles): a hundredth; at a tenth, a rating of 200 requests/s would ask for 1.3
# recordings/s, most of a core of the machine's two
RECORDING_SHARE = 0.01
SHARES = {"photo": PHOTO_SHARE, "audio": RECORDING_SHARE}
# A fine-tuned transformer's (a request of the mix 63 ms of a core, 45 times the TF-IDF model's
# for the same answer, a 10-review batch 0.3 s): a tenth, as a photo service's
TRANSFORMER_SHARE = 0.1


def share(spec: ModelSpec) -> float:
    """The model's share of the paced mix (PHOTO_SHARE for a photo service, RECORDING_SHARE
    for a speech one, TRANSFORMER_SHARE for a transformer classifier, else 1)."""
    shares = [SHARES.get(f.type, 1.0) for f in spec.fields.values()]
    return min([*shares, TRANSFORMER_SHARE if encodes_text(spec) else 1.0])


@dataclass
class Pool:
    """One model's bodies; draw() picks with the user's own random generator."""

    key: str
    records: list[dict[str, Any]]
    entities: list[dict[str, Any]] = field(default_factory=list)  # entity-keyed bodies

    def one(self, rng: random.Random) -> dict[str, Any]:
        return {"records": [rng.choice(self.records)]}

    def batch(self, rng: random.Random, size: int) -> dict[str, Any]:
        return {"records": rng.sample(self.records, min(size, len(self.records)))}

    def entity(self, rng: random.Random) -> dict[str, Any]:
        return rng.choice(self.entities)

    def malformed(self, rng: random.Random, spec: ModelSpec) -> tuple[dict[str, Any], str]:
        """A real record with one field of the wrong type, and that field's name."""
        record = dict(rng.choice(self.records))
        name = rng.choice(sorted(spec.fields))
        kind = spec.fields[name].type
        wrong = {
            "float": "n/a",
            "int": 2.5,
            "image": "not an image",
            "photo": "not a picture",
            "audio": "not a recording",
            "series": [1.0, "n/a"],
        }
        record[name] = wrong.get(kind, {"x": 1})
        return {"records": [record]}, name


@cache
def pool(key: str, root: Path, rows: int = POOL_ROWS) -> Pool:
    spec = load_catalog()[key]
    test = paths.split_dir(key, root) / "test.parquet"
    if not test.exists():
        raise FileNotFoundError(
            f"{test} is missing: the load test draws its payloads from the test splits "
            "that `dvc repro` writes (compose and k8s: the trainer's data volume)"
        )
    frame = pd.read_parquet(test).sample(frac=1.0, random_state=0).head(rows)
    records = as_records(frame, spec)
    records = spec.task_kind.payload(records)  # a search is asked queries, not whole reviews
    entities = []
    if spec.features is not None:  # the same rows by entity key, a few per request
        entities = [as_entities(frame.iloc[i : i + 3], spec) for i in range(0, len(frame) - 3, 3)]
    return Pool(key, records, entities)
