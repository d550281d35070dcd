"""Triton BLS model: encoded pictures in, a detector's boxes out (Triton's python backend).

The export stage copies this file to `<key>_image/1/model.py` beside the detector's ONNX
model `<key>` in the Triton repository, with its config.pbtxt parameters: the model to
call, the largest picture, the class names and the served score threshold. For each
picture of each request it decodes the PNG or JPEG (its size read from the header before
any pixel), sends the pixels and the size to the ONNX model through Triton (a request per
picture: the model's dynamic batcher batches pictures of one size), and answers with the
boxes as tensors and as the REST service's JSON. A picture that is not a PNG or JPEG, or
is larger than allowed, fails its request with a message; the other requests go on.
Self-contained: numpy, Pillow and Triton's `triton_python_backend_utils` only.
"""

import asyncio
import io
import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

FORMATS = ("PNG", "JPEG")


class BadPicture(ValueError):
    """A client's picture that cannot be served (the message says why)."""


def refused(message: str) -> Any:
    """The client's mistake: INVALID_ARG, Triton's 400 (not INTERNAL, its 500)."""
    return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)


def decode(value: bytes, max_height: int, max_width: int) -> np.ndarray:
    """RGB pixels [H, W, 3] of an encoded PNG or JPEG of at most max_height x max_width."""
    try:
        with Image.open(io.BytesIO(value), formats=FORMATS) as image:
            if image.height > max_height or image.width > max_width:  # header only so far
                raise BadPicture(
                    f"picture is {image.width}x{image.height}, larger than {max_width}x{max_height}"
                )
            return np.asarray(image.convert("RGB"))
    except BadPicture:
        raise
    except Exception as exc:  # Pillow raises many types for bytes that are not a picture
        raise BadPicture(f"not a PNG or JPEG picture ({type(exc).__name__}: {exc})") from exc


def answer(count: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
           classes: list[str], threshold: float) -> dict[str, Any]:  # fmt: skip
    """The REST service's answer for one picture: its boxes at or above the threshold."""
    kept = [
        {
            "box": [round(float(v), 2) for v in box],
            "score": round(float(s), 5),
            "label": classes[int(c)],
        }
        for box, s, c in zip(boxes[:count], scores[:count], labels[:count], strict=True)
        if s >= threshold
    ]
    return {"count": len(kept), "boxes": kept}


def padded(values: np.ndarray, rows: int) -> np.ndarray:
    """[N, rows, ...]: zero rows after a picture's own."""
    widths = [(0, 0), (0, rows - values.shape[1])] + [(0, 0)] * (values.ndim - 2)
    return np.pad(values, widths)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.model = parameters["model"]
        self.max_height, self.max_width = (
            int(parameters["max_height"]),
            int(parameters["max_width"]),
        )
        self.classes = json.loads(parameters["classes"])
        self.threshold = float(parameters["threshold"])

    async def execute(self, requests: list[Any]) -> list[Any]:
        return list(await asyncio.gather(*(self.respond(r) for r in requests)))

    async def respond(self, request: Any) -> Any:
        encoded = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
        try:
            pictures = [decode(bytes(v), self.max_height, self.max_width) for v in encoded]
        except BadPicture as exc:
            return pb_utils.InferenceResponse(error=refused(str(exc)))
        outcomes = await asyncio.gather(*(self.detect(p) for p in pictures))
        failed = [r for r in outcomes if isinstance(r, str)]
        if failed:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(failed[0]))
        results = [r for r in outcomes if not isinstance(r, str)]
        rows = max(r["boxes"].shape[1] for r in results)  # the same for every picture, or
        count = np.concatenate([r["count"] for r in results]).reshape(-1, 1)  # padded to it
        boxes = np.concatenate([padded(r["boxes"], rows) for r in results])
        scores = np.concatenate([padded(r["scores"], rows) for r in results])
        labels = np.concatenate([padded(r["labels"], rows) for r in results])
        names = np.vectorize(lambda c: self.classes[int(c)].encode(), otypes=[object])(labels)
        answers = [
            json.dumps(answer(int(n), b, s, c, self.classes, self.threshold)).encode()
            for n, b, s, c in zip(count[:, 0], boxes, scores, labels, strict=True)
        ]
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("count", count.astype(np.int64)),
                pb_utils.Tensor("boxes", boxes.astype(np.float32)),
                pb_utils.Tensor("scores", scores.astype(np.float32)),
                pb_utils.Tensor("labels", names),
                pb_utils.Tensor("detections", np.array(answers, dtype=object).reshape(-1, 1)),
            ]
        )

    async def detect(self, picture: np.ndarray) -> dict[str, np.ndarray] | str:
        """The ONNX model's outputs for one picture, through Triton (its batcher)."""
        size = np.array([picture.shape[:2]], np.int64)
        inner = pb_utils.InferenceRequest(
            model_name=self.model,
            requested_output_names=["count", "boxes", "scores", "labels"],
            inputs=[pb_utils.Tensor("image", picture[None]), pb_utils.Tensor("image_size", size)],
        )
        result = await inner.async_exec()
        if result.has_error():
            return str(result.error().message())
        names = ("count", "boxes", "scores", "labels")
        return {n: pb_utils.get_output_tensor_by_name(result, n).as_numpy() for n in names}
