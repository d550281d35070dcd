"""Detection and segmentation on the task layer: COCO scoring, IoU, tiles, photos."""

import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import ValidationError

from contract import reference
from contract.catalog import EMBEDDING_DIMS, INPUT_EMBEDDING, InputField
from contract.feeds import SIZE_SUFFIX, Photo, each_record, input_names, photo_tensors
from contract.tasks import LABEL, SCORE, detection, segmentation
from contract.tasks.common import ServedGraph
from pipelines import quantize
from pipelines.models import tree_detection
from services.api import predlog
from services.api.inputs import MAX_PHOTOS, record_model, records_limit
from tests.conftest import CATALOG

TREES = CATALOG["tree_detection"]
CANVASES = CATALOG["fashion_segmentation"]


def padded(boxes: list[list[float]], scores: list[float], rows: int = 5) -> np.ndarray:
    """One picture's native detections [rows, 6]: box, score, class 0; zeros after."""
    out = np.zeros((rows, detection.COLUMNS))
    for i, (box, score) in enumerate(zip(boxes, scores, strict=True)):
        out[i, :4], out[i, 4] = box, score
    return out


TRUTH = np.empty(2, dtype=object)
TRUTH[0] = np.array([[10, 10, 50, 50], [60, 60, 90, 100]], np.float32)
TRUTH[1] = np.array([[0, 0, 20, 20]], np.float32)


def test_perfect_boxes_score_one_and_shifted_ones_less() -> None:
    perfect = np.stack([padded(TRUTH[0].tolist(), [0.9, 0.8]), padded(TRUTH[1].tolist(), [0.7])])
    scores = detection.score(TREES, TRUTH, perfect)
    assert scores["map_50"] == scores["map"] == scores["recall_50"] == 1.0
    assert scores["boxes_per_truth"] == 1.0
    shifted = perfect.copy()
    shifted[0, 0, :4] += [12, 12, 12, 12]  # IoU 0.29 with its truth: a miss at 0.5
    worse = detection.score(TREES, TRUTH, shifted)
    assert worse["map_50"] < 1.0 and worse["recall_50"] == pytest.approx(2 / 3, abs=1e-6)


def test_nothing_found_scores_zero() -> None:
    nothing = np.zeros((2, 5, detection.COLUMNS))
    assert detection.score(TREES, TRUTH, nothing)["map_50"] == 0.0


def test_rows_past_the_count_are_not_detections() -> None:
    outputs = {
        "count": np.array([1]),
        "boxes": np.array([[[1, 2, 3, 4], [5, 6, 7, 8]]], np.float32),
        "scores": np.array([[0.9, 0.4]], np.float32),
        "labels": np.array([[0, 0]]),
    }
    native = detection.native(outputs, pd.DataFrame(index=[0]), TREES)
    assert native.shape == (1, 2, 6)
    assert native[0, 0].tolist() == pytest.approx([1, 2, 3, 4, 0.9, 0])
    assert not native[0, 1].any()


class Served:
    def __init__(self, spec: object, threshold: float | None) -> None:
        self.spec, self.threshold, self.segments = spec, threshold, []


def test_a_detection_answer_keeps_the_boxes_at_the_threshold() -> None:
    result = {
        "count": np.array([2, 0]),
        "boxes": np.array([[[1, 2, 3, 4], [5, 6, 7, 8]], [[0, 0, 0, 0]] * 2], np.float32),
        "scores": np.array([[0.9, 0.2], [0, 0]], np.float32),
        "labels": np.zeros((2, 2), np.int64),
    }
    first, second = detection.format(result, Served(TREES, 0.5))
    assert first == {"count": 1, "boxes": [{"box": [1, 2, 3, 4], "score": 0.9, "label": "tree"}]}
    assert second == {"count": 0, "boxes": []}
    assert detection.format(result, Served(TREES, None))[0]["count"] == 2
    # the drift view: the boxes answered and their median side, none where no box is
    assert detection.answered(TREES, first) == {SCORE: 1.0, detection.BOX_SIZE: 2.0}
    assert detection.answered(TREES, second) == {SCORE: 0.0, detection.BOX_SIZE: None}


def test_boxes_are_checked_as_the_target() -> None:
    assert detection._box_list([[0, 0, 5, 5]]) and detection._box_list([])
    assert not detection._box_list([[5, 0, 1, 5]])  # xmax < xmin
    assert not detection._box_list([[0, 0, 5]]) and not detection._box_list([[0, 0, np.nan, 4]])


def test_tiles_are_near_equal_and_no_larger_than_asked() -> None:
    assert tree_detection.tile_edges(2299, 1000) == [0, 766, 1533, 2299]
    assert tree_detection.tile_edges(1000, 1000) == [0, 1000]


def test_a_box_belongs_to_the_tile_holding_its_centre() -> None:
    boxes = np.array([[90, 10, 130, 30], [80, 10, 110, 30], [10, 10, 20, 20]], np.float64)
    left = tree_detection.tile_boxes(boxes, 0, 0, 100, 100)
    right = tree_detection.tile_boxes(boxes, 100, 0, 200, 100)
    assert left.tolist() == [[80, 10, 100, 30], [10, 10, 20, 20]]  # centre x 95
    assert right.tolist() == [[0, 10, 30, 30]]  # centre x 110, clipped
    halves = tree_detection.tile_boxes(np.array([[90.0, 0, 110, 10]]), 100, 0, 200, 100)
    assert halves.tolist() == [[0, 0, 10, 10]]  # centre on the edge: the right tile only
    assert tree_detection.tile_boxes(np.zeros((0, 4)), 0, 0, 9, 9).shape == (0, 4)


def test_pictures_become_records_of_tiles() -> None:
    picture = Image.fromarray(np.full((30, 50, 3), 7, np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    source = pd.DataFrame(
        {"image": [buffer.getvalue()], "boxes": [[[0, 0, 10, 10], [40, 20, 50, 30]]],
         "name": ["a"], "split": ["train"]}
    )  # fmt: skip
    small = TREES.model_copy(update={"fields": {"image": InputField(type="photo", shape=[20, 25])}})
    records = tree_detection.records(source, small)
    assert records["tile"].tolist() == ["a/r0c0", "a/r0c1", "a/r1c0", "a/r1c1"]
    assert records["boxes"].map(len).tolist() == [1, 0, 0, 1]
    sizes = [Image.open(io.BytesIO(v)).size for v in records["image"]]
    assert sizes == [(25, 15), (25, 15), (25, 15), (25, 15)]


def test_photos_are_padded_to_the_largest_with_their_own_sizes() -> None:
    small, large = np.ones((2, 3, 3), np.uint8), np.full((4, 2, 3), 9, np.uint8)
    batch, sizes = photo_tensors([Photo.of(b"x", small), Photo.of(b"y", large)])
    assert batch.shape == (2, 4, 3, 3) and sizes.tolist() == [[2, 3], [4, 2]]
    assert batch[0, 2:].sum() == 0 and (batch[1, :, :2] == 9).all()
    assert input_names(TREES) == ["image", "image" + SIZE_SUFFIX]


def encoded(pixels: np.ndarray, kind: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_photo_field_takes_png_and_jpeg_within_its_size() -> None:
    model = record_model(TREES)
    pixels = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    png = model.model_validate({"image": encoded(pixels)}).image  # type: ignore[attr-defined]
    assert isinstance(png, Photo) and (png.pixels == pixels).all()
    jpeg = model.model_validate({"image": encoded(pixels, "JPEG")}).image  # type: ignore[attr-defined]
    assert jpeg.pixels.shape == (40, 30, 3) and bytes(jpeg).startswith(b"\xff\xd8\xff")
    grey = model.model_validate({"image": encoded(pixels[:, :, 0])}).image  # type: ignore[attr-defined]
    assert grey.pixels.shape == (40, 30, 3)  # any mode becomes RGB


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (base64.b64encode(b"GIF89a" + bytes(20)).decode(), "not a PNG or JPEG"),
        ("not base64!", "not valid base64"),
        (encoded(np.zeros((1001, 10, 3), np.uint8)), "larger than 1000x1000"),
    ],
)
def test_a_bad_photo_is_a_validation_error(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        record_model(TREES).model_validate({"image": value})


def test_a_photo_claiming_a_huge_size_is_refused_before_decoding() -> None:
    png = base64.b64decode(encoded(np.zeros((8, 8, 3), np.uint8)))
    header = png[:16] + (60_000).to_bytes(4, "big") * 2 + png[24:]  # IHDR's width, height
    with pytest.raises(ValidationError, match="60000x60000, larger than"):
        record_model(TREES).model_validate({"image": base64.b64encode(header).decode()})


def test_the_prediction_log_keeps_a_photos_summary_and_drift_reads_it_as_the_picture() -> None:
    """A logged tile is a few numbers, not 1.5 MB of base64, and the drift view of the
    logged summary is the drift view of the picture itself (the reference's rows)."""
    pixels = np.random.default_rng(1).integers(0, 255, (600, 800, 3), dtype=np.uint8)
    photo = record_model(TREES).model_validate({"image": encoded(pixels)}).image  # type: ignore[attr-defined]
    logged = predlog.loads(predlog.dumps(predlog.table(["image"], [(photo,)])))
    assert len(predlog.dumps(logged)) < 200
    from_log = reference.drift_view(TREES, pd.DataFrame(predlog.records_of(logged)))
    from_split = reference.drift_view(TREES, pd.DataFrame({"image": [bytes(photo)]}))
    pd.testing.assert_frame_equal(from_log, from_split)
    assert from_log.loc[0, "image.height"] == 600 and from_log.loc[0, "image.width"] == 800
    assert from_log.loc[0, "image.mean"] == pytest.approx(pixels.mean() / 255, rel=1e-5)


def test_the_reference_and_the_logged_window_are_one_view_of_the_same_answers() -> None:
    """The reference (register: the graph's outputs on the training rows) and the window
    (the service's logged records and answers) of the same pictures and outputs are the same
    frame: the boxes counted at the served threshold, their size, the embedding."""
    rng = np.random.default_rng(2)
    pictures = [rng.integers(0, 255, (60, 80, 3), dtype=np.uint8) for _ in range(2)]
    result = {
        "count": np.array([3, 0]),
        "boxes": np.array([[[0, 0, 4, 9], [2, 2, 6, 6], [1, 1, 2, 2]], [[0] * 4] * 3], np.float32),
        "scores": np.array([[0.9, 0.6, 0.3], [0, 0, 0]], np.float32),
        "labels": np.zeros((2, 3), np.int64),
        INPUT_EMBEDDING: rng.normal(size=(2, EMBEDDING_DIMS)).astype(np.float32),
    }
    served = ServedGraph(TREES, {"threshold": "0.5"})
    rows = pd.DataFrame({"image": [base64.b64decode(encoded(p)) for p in pictures]})
    ref = reference.reference(TREES, rows, result, served)
    model = record_model(TREES)
    records = [model.model_validate({"image": encoded(p)}) for p in pictures]
    answer = {"request_id": "r", "model": "tree_detection", "version": "1", "alias": "champion",
              "predictions": detection.format(result, served)}  # fmt: skip
    drift = [{INPUT_EMBEDDING: row} for row in result[INPUT_EMBEDDING].tolist()]
    row = predlog.record_row(answer, records, "/predict", 1.0, 0, drift)
    inputs = pd.DataFrame(predlog.records_of(predlog.loads(row[8])))
    window = pd.concat(
        [reference.drift_view(TREES, inputs), reference.outputs_view(TREES, predlog.loads(row[9]))],
        axis=1,
    )
    pd.testing.assert_frame_equal(ref, window)
    assert ref[reference.PREDICTION].tolist() == [2.0, 0.0]  # at the served threshold
    assert ref[detection.BOX_SIZE].iloc[0] == pytest.approx((6.0 + 4.0) / 2)  # median side
    assert np.isnan(ref[detection.BOX_SIZE].iloc[1])
    embedded = reference.embedding_columns("image")
    assert set(embedded) <= set(reference.columns(TREES).features)
    np.testing.assert_allclose(ref[embedded].to_numpy(), result[INPUT_EMBEDDING], rtol=1e-6)


def test_segmentation_reference_reads_its_answers_as_the_window_does() -> None:
    mask = np.zeros((2, 64, 64), np.uint8)
    mask[0, :8, :8] = 3
    areas = np.stack([np.bincount(m.reshape(-1), minlength=11) for m in mask])
    result = {"label": mask, "areas": areas, INPUT_EMBEDDING: np.ones((2, EMBEDDING_DIMS))}
    rows = pd.DataFrame({"image": [m.tobytes() for m in mask]})
    ref = reference.reference(CANVASES, rows, result, ServedGraph(CANVASES, {}))
    assert ref[reference.PREDICTION].tolist() == [64 / 4096, 0.0]
    assert ref[reference.PREDICTED_LABEL].tolist() == ["Pullover", "background"]
    assert reference.columns(CANVASES).outputs == [reference.PREDICTION, reference.PREDICTED_LABEL]


def test_photo_requests_carry_few_records() -> None:
    assert records_limit(TREES, 1000) == MAX_PHOTOS
    assert records_limit(CANVASES, 1000) == 1000


def test_iou_counts_every_pixel_of_the_split() -> None:
    truth = np.array([[[0, 1], [1, 2]]], np.uint8)
    found = np.array([[[0, 1], [2, 2]]], np.uint8)
    iou, present = segmentation.intersection_over_union(truth, found, 4)
    assert iou.tolist() == pytest.approx([1.0, 0.5, 0.5, 0.0])
    assert present.tolist() == [True, True, True, False]


def test_perfect_masks_score_one() -> None:
    masks = np.random.default_rng(1).integers(0, 11, (3, 64, 64)).astype(np.uint8)
    probabilities = np.eye(11, dtype=np.float32)[masks].transpose(0, 3, 1, 2)
    scores = segmentation.score(CANVASES, masks, probabilities)
    assert scores["mean_iou"] == scores["pixel_accuracy"] == scores["background_iou"] == 1.0


def test_a_segmentation_answer_is_a_png_mask_and_areas() -> None:
    mask = np.zeros((1, 64, 64), np.uint8)
    mask[0, :10, :10], mask[0, 40:, 40:] = 1, 7
    areas = np.bincount(mask.reshape(-1), minlength=11)[None]
    (answer,) = segmentation.format({"label": mask, "areas": areas}, Served(CANVASES, None))
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask"]))))
    assert (decoded == mask[0]).all()
    assert answer["areas"] == {"T-shirt/top": 100, "Shirt": 576}
    assert answer["label"] == "Shirt" and answer["classes"][0] == "background"
    seen = segmentation.answered(CANVASES, answer)
    assert seen == {SCORE: pytest.approx(676 / 4096), LABEL: "Shirt"}


def test_a_batch_splits_into_records_each_cut_to_its_size() -> None:
    small, large = np.ones((2, 3, 3), np.uint8), np.full((4, 2, 3), 9, np.uint8)
    batch, sizes = photo_tensors([Photo.of(b"x", small), Photo.of(b"y", large)])
    first, second = each_record({"image": batch, "image_size": sizes}, TREES)
    assert (first["image"][0] == small).all() and (second["image"][0] == large).all()
    assert first["image_size"].tolist() == [[2, 3]]


def test_int8_ships_only_within_its_allowed_drop() -> None:
    kept = quantize.judge(CANVASES, 0.84, 0.835, (200, 100))
    assert kept["shipped"] and kept["drop"] == pytest.approx(0.005) and not kept["why"]
    refused = quantize.judge(CANVASES, 0.84, 0.82, (200, 100))
    assert not refused["shipped"] and "mean_iou drops 0.0200 > 0.01" in refused["why"]


def test_int8_quantizes_a_graph_and_keeps_its_metadata() -> None:
    """A small conv graph, calibrated on real canvases: int8 weights, the same outputs
    within the quantization's error, the FP32 graph's metadata and precision: int8."""
    import onnx
    import onnxruntime as ort
    import torch

    class Grey(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU())

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.net(image.float().unsqueeze(1) / 255)  # type: ignore[no-any-return]

    buffer = io.BytesIO()
    sample = torch.zeros((2, 64, 64), dtype=torch.uint8)
    torch.onnx.export(Grey().eval(), (sample,), buffer, input_names=["image"], output_names=["out"],
                      opset_version=18, dynamic_axes={"image": {0: "n"}}, dynamo=False)  # fmt: skip
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(graph, {"model": "fashion_segmentation"})
    canvases = pd.DataFrame(
        {
            "image": [
                bytes(np.random.default_rng(i).integers(0, 255, 4096, dtype=np.uint8))
                for i in range(8)
            ]
        }
    )
    int8 = quantize.quantized(graph, CANVASES, canvases)
    meta = {p.key: p.value for p in int8.metadata_props}
    assert meta == {"model": "fashion_segmentation", "precision": "int8", "quantization": "static"}
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    feeds = {"image": np.frombuffer(canvases["image"][0], np.uint8).reshape(1, 64, 64)}
    runs = [
        ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, feeds
        )[0]
        for g in (graph, int8)
    ]
    assert np.abs(runs[0] - runs[1]).max() < 0.05


def test_boxes_at_the_threshold_match_the_truth_once_each() -> None:
    """Two boxes on one true box: one hit, one false positive; below the threshold: unseen."""
    predicted = np.stack(
        [
            padded([[10, 10, 50, 50], [11, 11, 50, 50], [60, 60, 90, 100]], [0.9, 0.8, 0.2]),
            padded([[0, 0, 20, 20]], [0.7]),
        ]
    )
    scores = detection.score(TREES, TRUTH, predicted, threshold=0.5)
    assert scores["precision_at_threshold"] == pytest.approx(2 / 3, abs=1e-6)
    assert scores["recall_at_threshold"] == pytest.approx(2 / 3, abs=1e-6)
    assert detection.box_iou(np.array([[0, 0, 2, 2.0]]), np.array([[1, 1, 3, 3.0]]))[0, 0] == (
        pytest.approx(1 / 7)
    )
