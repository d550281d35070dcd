"""Request bodies from the stack's own test splits, printed as JSON: run inside a container
that mounts the DVC workspace (`docker-compose exec -T drift python - < payloads.py`).

Per model: `records` (two rows for /predict), `inputs` (the same rows as OIP v2 JSON
tensors) and `batch` (100 rows, repeated if the split is smaller, for a drift window; none
for a photo model, whose requests carry a few pictures)."""

import json
import sys
from typing import Any

import numpy as np
import pandas as pd

from contract import paths
from contract.catalog import load_catalog
from contract.feeds import one_at_a_time
from services.tools.examples import OIP_DATATYPES, as_records, as_tensors


def tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    data = [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()]
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": OIP_DATATYPES[array.dtype.kind],
        "data": data,
    }


def bodies() -> dict[str, Any]:
    out = {}
    for key, spec in load_catalog().items():
        test = pd.read_parquet(paths.split_dir(key) / "test.parquet")
        two = test.head(2)
        batch = pd.concat([test] * (100 // len(test) + 1)).head(100)
        out[key] = {
            "records": as_records(two, spec),
            "inputs": [tensor(n, a) for n, a in as_tensors(two, spec).items()],
            "batch": [] if one_at_a_time(spec) else as_records(batch, spec),
        }
    return out


json.dump(bodies(), sys.stdout)
