"""Evaluation plots as PNG: DVC renders images as they are, for every task alike."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})  # no version stamp: stable bytes
    plt.close(fig)


def roc(y: np.ndarray, positive: np.ndarray, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(y, positive, ax=ax, plot_chance_level=True)
    ax.set_title(f"{title}: ROC (test split)")
    _save(fig, path)


def precision_recall(y: np.ndarray, scores: np.ndarray, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    PrecisionRecallDisplay.from_predictions(y, scores, ax=ax, plot_chance_level=True)
    ax.set_title(f"{title}: precision-recall (test split)")
    _save(fig, path)


def score_distribution(
    y: np.ndarray, scores: np.ndarray, threshold: float, names: list[str], title: str, path: Path
) -> None:
    """Anomaly scores of each true class, with the decision threshold."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bins = np.linspace(scores.min(), scores.max(), 60).tolist()
    for value, name in enumerate(names):
        ax.hist(scores[y == value], bins=bins, alpha=0.6, label=f"{name} ({(y == value).sum()})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_yscale("log")
    ax.set_xlabel("anomaly score (higher: more anomalous)")
    ax.set_ylabel("rows")
    ax.legend()
    ax.set_title(f"{title}: anomaly scores by true class (test split)")
    _save(fig, path)


def segments_pca(embedding: np.ndarray, labels: np.ndarray, title: str, path: Path) -> None:
    """The clustered space on its first two principal components, a colour per segment."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=0).fit(embedding)
    points = pca.transform(embedding)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for segment in np.unique(labels):
        chosen = labels == segment
        ax.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=6,
            alpha=0.5,
            label=f"segment {segment + 1} ({chosen.sum()})",
        )
    explained = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of the variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%})")
    ax.legend(markerscale=3)
    ax.set_title(f"{title}: segments on two principal components (test split)")
    _save(fig, path)


def silhouette_by_k(scores: dict[int, float], chosen: int, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = sorted(scores)
    ax.plot(ks, [scores[k] for k in ks], marker="o")
    ax.axvline(chosen, color="black", linestyle="--", label=f"chosen k = {chosen}")
    ax.set_xlabel("k (segments)")
    ax.set_ylabel("silhouette (training split)")
    ax.legend()
    ax.set_title(f"{title}: k chosen by silhouette")
    _save(fig, path)


def confusion(y: np.ndarray, labels: np.ndarray, names: list[str], title: str, path: Path) -> None:
    size = 4 + 0.5 * len(names)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        y, labels, display_labels=names, ax=ax, colorbar=False, xticks_rotation=45
    )
    ax.set_title(f"{title}: confusion matrix (test split)")
    _save(fig, path)


def residuals(y: np.ndarray, predicted: np.ndarray, title: str, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    left.scatter(y, predicted, s=6, alpha=0.5)
    lims = [min(y.min(), predicted.min()), max(y.max(), predicted.max())]
    left.plot(lims, lims, color="grey", lw=1)
    left.set(
        xlabel="actual", ylabel="predicted", title="predicted vs actual", xscale="log", yscale="log"
    )
    right.scatter(predicted, np.log(y) - np.log(predicted), s=6, alpha=0.5)
    right.axhline(0, color="grey", lw=1)
    right.set(
        xlabel="predicted", ylabel="log(actual) - log(predicted)", title="residuals", xscale="log"
    )
    for axis in (left.xaxis, left.yaxis, right.xaxis):  # 100k, 200k: no crowded minor labels
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(EngFormatter())
        axis.set_minor_formatter(NullFormatter())
    fig.suptitle(f"{title} (test split)")
    _save(fig, path)


def importance(table: pd.DataFrame, title: str, path: Path, top: int = 20) -> None:
    shown = table.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(shown) + 1.5))
    ax.barh(
        shown["feature"], shown["importance"], color=np.where(shown["importance"] >= 0, "C0", "C3")
    )
    ax.set(title=f"{title}: feature importance", xlabel=table.attrs.get("measure", "importance"))
    _save(fig, path)


def learning_curve(history: list[dict[str, float]], title: str, path: Path) -> None:
    """Losses on the left, the other measures (accuracy, IoU, mAP) on the right, by epoch
    (or by step, for a recipe that validates every few steps)."""
    frame = pd.DataFrame(history)
    x = "epoch" if "epoch" in frame else "step"
    columns = [str(c) for c in frame.columns]
    losses = [c for c in columns if c.endswith("loss")]
    measures = [c for c in columns if c not in losses and c != x and not c.endswith("_s")]
    fig, (loss, other) = plt.subplots(1, 2, figsize=(10, 4))
    frame.plot(x=x, y=losses, ax=loss, marker="o", title="loss")
    if measures:
        frame.plot(x=x, y=measures, ax=other, marker="o", title=", ".join(measures))
    fig.suptitle(f"{title}: learning curve")
    _save(fig, path)


def ratings(y: np.ndarray, predicted: np.ndarray, title: str, path: Path) -> None:
    """Predicted rating per actual held-out rating (a box per star value)."""
    values = np.unique(y)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.boxplot([predicted[y == v] for v in values], showfliers=False)
    ax.set_xticks(range(1, len(values) + 1), [f"{v:g}" for v in values])
    ax.plot(range(1, len(values) + 1), values, color="grey", lw=1, ls="--", label="perfect")
    ax.set(xlabel="actual rating", ylabel="predicted rating", title="predicted vs actual rating")
    ax.legend(loc="upper left")
    fig.suptitle(f"{title} (test split)")
    _save(fig, path)


def ranking(curve: pd.DataFrame, title: str, path: Path) -> None:
    """Precision and recall at k of the served ranking against the popularity baseline."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    for axis, measure in ((left, "precision"), (right, "recall")):
        axis.plot(curve["k"], curve[measure], marker="o", ms=3, label="model")
        axis.plot(curve["k"], curve[f"popularity_{measure}"], marker="o", ms=3,
                  label="popularity baseline")  # fmt: skip
        axis.set(xlabel="k (list length)", ylabel=f"{measure}@k", title=f"{measure}@k")
        axis.legend()
    fig.suptitle(f"{title}: {curve.attrs.get('users', '?')} users' held-out likes (test split)")
    _save(fig, path)


def forecast_week(week: dict[str, Any], title: str, path: Path) -> None:
    """The first test week, step by step: actual, the model's day-ahead forecast, naive."""
    fig, ax = plt.subplots(figsize=(11, 4.5))
    steps = len(week["actual"])
    times = pd.date_range(week["start"], periods=steps, freq=f"{24 * 60 * 7 // steps}min")
    ax.plot(times, week["actual"], color="black", lw=1.5, label="actual")
    ax.plot(times, week["model"], color="C0", lw=1.2, label="day-ahead forecast")
    ax.plot(times, week["seasonal naive"], color="C1", lw=1, ls="--", label="seasonal naive")
    ax.set(ylabel="demand", title=f"first test week from {times[0]:%Y-%m-%d}")
    ax.legend()
    fig.autofmt_xdate()
    fig.suptitle(f"{title} (test split)")
    _save(fig, path)


def mape_by_month(table: pd.DataFrame, title: str, path: Path) -> None:
    """MAPE per test month of each forecast (bars side by side)."""
    names = [c for c in table.columns if c not in ("month", "days")]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar(np.arange(len(table)) + i * width, 100 * table[name], width, label=name)
    ax.set_xticks(np.arange(len(table)) + width * (len(names) - 1) / 2, table["month"])
    ax.set(ylabel="MAPE (%)", title="day-ahead MAPE by month")
    ax.legend()
    fig.suptitle(f"{title} (test split)")
    _save(fig, path)


def recall_by_nprobe(curve: pd.DataFrame, title: str, path: Path) -> None:
    """recall@k against exact search, and time per query, by the index cells a query visits."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.plot(curve["nprobe"], curve["recall"], marker="o", color="C0", label="recall@k")
    chosen = curve[curve["chosen"]]
    ax.scatter(chosen["nprobe"], chosen["recall"], s=120, facecolors="none", edgecolors="black",
               zorder=3, label=f"chosen nprobe {int(chosen['nprobe'].iloc[0])}")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set(xlabel="nprobe (cells visited per query)", ylabel="recall@k vs exact search")
    time_axis = ax.twinx()
    time_axis.plot(curve["nprobe"], curve["ms_per_query"], marker="s", ms=3, color="C1", ls="--")
    time_axis.set_ylabel("ms per query (search only, one thread)", color="C1")
    ax.legend(loc="lower right")
    ax.set_title(f"{title}: recall against time (test queries)")
    _save(fig, path)


def similarity(scores: np.ndarray, relevant: np.ndarray, title: str, path: Path) -> None:
    """Cosine similarity of each test query's results, by rank: how close the corpus is
    (a drop in the served best match is what drift looks like)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ranks = np.arange(1, scores.shape[1] + 1)
    parts = ax.boxplot([scores[:, i] for i in range(scores.shape[1])], positions=ranks,
                       showfliers=False)  # fmt: skip
    del parts
    ax.plot(ranks, relevant, marker="o", color="C2", label="share with the query's label")
    ax.set(xlabel="rank", ylabel="cosine similarity / share", ylim=(0, 1))
    ax.legend(loc="lower left")
    ax.set_title(f"{title}: results by rank (test queries)")
    _save(fig, path)


def detection_pr(recall: np.ndarray, curves: dict[str, np.ndarray], title: str, path: Path) -> None:
    """COCO's interpolated precision at each recall level, per IoU threshold."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, precision in curves.items():
        shown = np.where(precision < 0, np.nan, precision)  # -1: recall never reached
        ax.plot(recall, shown, label=f"{name} (AP {np.nanmean(np.nan_to_num(shown)):.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left")
    ax.set_title(f"{title}: precision-recall (test split)")
    _save(fig, path)


def detections(
    picture: np.ndarray,
    truth: np.ndarray,
    found: np.ndarray,
    scores: np.ndarray,
    threshold: float | None,
    title: str,
    path: Path,
) -> None:
    """The first test picture: true boxes (dashed white) and the boxes found at or above
    the served threshold (solid, coloured by score)."""
    from matplotlib.patches import Rectangle

    height, width = picture.shape[:2]
    fig, ax = plt.subplots(figsize=(8, 8 * height / max(width, 1)))
    ax.imshow(picture)
    for x0, y0, x1, y1 in truth:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", ls="--", lw=1))
    floor = threshold or 0.0
    colours = plt.get_cmap("autumn_r")
    shown = 0
    for (x0, y0, x1, y1), score in zip(found, scores, strict=True):
        if score >= floor:
            shown += 1
            ax.add_patch(
                Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colours(score), lw=1.2)
            )
    ax.set_axis_off()
    ax.set_title(f"{title}: {len(truth)} true boxes (dashed), {shown} found (score >= {floor:g})")
    _save(fig, path)


def class_iou(iou: dict[str, float], title: str, path: Path) -> None:
    """Intersection over union of each class present in the test masks."""
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(iou) + 1.5))
    names = list(iou)[::-1]
    ax.barh(names, [iou[n] for n in names], color="tab:blue")
    for i, name in enumerate(names):
        ax.text(iou[name], i, f" {iou[name]:.3f}", va="center")
    ax.set(xlim=(0, 1.1), xlabel="IoU")
    ax.set_title(f"{title}: IoU per class (test split)")
    _save(fig, path)


def masks(
    pictures: list[np.ndarray], truth: np.ndarray, found: np.ndarray, names: list[str],
    title: str, path: Path,
) -> None:  # fmt: skip
    """Each image above its true mask and the predicted one (one colour per class)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    palette: list[Any] = ["black", *(plt.get_cmap("tab10")(i) for i in range(len(names) - 1))]
    colours = ListedColormap(palette)
    fig, axes = plt.subplots(3, len(pictures), figsize=(2 * len(pictures), 6.4), squeeze=False)
    for i, picture in enumerate(pictures):
        axes[0, i].imshow(picture, cmap="gray")
        axes[1, i].imshow(truth[i], cmap=colours, vmin=0, vmax=len(names) - 1)
        axes[2, i].imshow(found[i], cmap=colours, vmin=0, vmax=len(names) - 1)
    for row, label in zip(axes, ["image", "true mask", "predicted"], strict=True):
        row[0].set_ylabel(label)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [Rectangle((0, 0), 1, 1, color=colours(i)) for i in range(1, len(names))]
    fig.legend(handles, names[1:], loc="lower center", ncol=5, fontsize=8)
    fig.suptitle(f"{title}: masks (test split)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def wer_by_recording(names: list[str], rates: np.ndarray, title: str, path: Path) -> None:
    """Each test recording's word error rate, named by its reference's first words."""
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(names) + 1.5))
    shown = list(range(len(names)))[::-1]
    ax.barh([names[i] for i in shown], [rates[i] for i in shown], color="tab:blue")
    for row, i in enumerate(shown):
        ax.text(rates[i], row, f" {rates[i]:.0%}", va="center")
    ax.set(xlim=(0, max(1.0, float(np.max(rates, initial=0)) * 1.15)), xlabel="word error rate")
    ax.set_title(f"{title}: word error rate per recording (test split)")
    _save(fig, path)


def confidence_against_wer(
    sets: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path
) -> None:
    """Each recording's served confidence against its word error rate, a colour per set
    (the real test recordings, the synthetic speech): whether a low confidence flags the
    transcripts worth a second look."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (confidence, rates) in sets.items():
        ax.scatter(confidence, rates, s=24, alpha=0.7, label=f"{name} ({len(rates)})")
    ax.set(xlabel="confidence (exp of the mean token log-probability)", ylabel="word error rate")
    ax.set_xlim(0, 1)
    ax.legend()
    ax.set_title(f"{title}: confidence against word error rate")
    _save(fig, path)
