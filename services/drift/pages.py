"""The drift service's index page: plain HTML, no assets (the reports carry Evidently's)."""

import time
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.drift.service import Drift

STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin-bottom:2rem}td,th{border:1px solid #ccc;padding:.3rem .6rem}
th{background:#f3f3f3;text-align:left}.drift{color:#b00;font-weight:bold}.ok{color:#070}"""


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _model_row(drift: "Drift", key: str) -> list[str]:
    result = drift.results.get(key)
    if result is None:
        problem = escape(drift.problems.get(key, "no run yet"))
        return [escape(key), "-", "-", problem, "-", "-", "-"]
    verdict = (
        '<span class="drift">DRIFT</span>'
        if result.dataset_drifted
        else '<span class="ok">no drift</span>'
    )
    worst = sorted(result.features.items(), key=lambda kv: -kv[1]["score"])[:3]
    top = ", ".join(f"{escape(n)} {f['score']:.3f}" for n, f in worst)
    output = result.prediction.get("prediction", {})
    return [
        f'<a href="models/{escape(key)}/report">{escape(key)}</a>',
        f"v{escape(result.version)}",
        f"{result.share_drifted:.0%}",
        verdict + f" (top: {top})",
        f"{output.get('score', float('nan')):.3f}",
        str(result.rows),
        _when(result.ran_at),
    ]


def _job_row(job: Any) -> list[str]:
    outcome = f"v{job.version} @{job.alias}" if job.version else "-"
    return [
        f'<a href="retraining/{escape(job.id)}">{escape(job.id)}</a>',
        escape(job.model),
        escape(job.state),
        escape(outcome),
        escape(job.gate or ""),
        escape(job.reason),
        _when(job.queued_at),
        _when(job.finished_at),
    ]


def index(drift: "Drift") -> str:
    models = _table(
        ["model", "reference", "features drifted", "verdict", "output drift", "rows", "last run"],
        [_model_row(drift, key) for key in drift.specs],
    )
    jobs = _table(
        ["job", "model", "state", "outcome", "gate", "asked by", "queued", "finished"],
        [_job_row(job) for job in drift.retrainer.recent()[:20]],
    )
    events = _table(
        ["time", "kind", "model", "event"],
        [
            [_when(e["at"]), escape(e["kind"]), escape(e["model"] or "-"), escape(e["text"])]
            for e in list(drift.events)[:50]
        ],
    )
    settings = drift.settings
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Drift</title>"
        f"<style>{STYLE}</style></head><body><h1>Drift</h1>"
        f"<p>Window: the latest {settings.window_rows} predictions of the last "
        f"{settings.window_s / 3600:g} h (at least {settings.min_rows}); {settings.num_method} / "
        f"{settings.cat_method} distance, threshold {settings.threshold}, data-set drift at "
        f"{settings.drift_share:.0%} of the features; checked every {settings.schedule_s:g} s. "
        f"JSON: <a href='models'>models</a>, <a href='retraining'>retraining</a>, "
        f"<a href='events'>events</a>, <a href='metrics'>metrics</a>.</p>"
        f"<h2>Models</h2>{models}<h2>Retraining</h2>{jobs}<h2>Events</h2>{events}</body></html>"
    )
