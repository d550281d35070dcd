"""Triton BLS model: encoded pictures in, a segmentation's masks out (Triton's python backend).

The export stage copies this file to `<key>_image/1/model.py` beside the segmentation's ONNX
model `<key>` in the Triton repository, with its config.pbtxt parameters: the model to
call, its input's height and width, the largest picture taken and the class names. Each
picture (PNG or JPEG, any mode, its size read from the header before any pixel) becomes
grey levels resized to the model's input; the batch's pictures go to the ONNX model through
Triton in one request, and each mask comes back resized to its picture's own size (nearest
class), as a PNG with each class's area in the REST service's JSON. A picture that cannot be
decoded, or is larger than allowed, fails its request with a message; the others go on.
Self-contained: numpy, Pillow and Triton's `triton_python_backend_utils` only.
"""

import base64
import io
import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

FORMATS = ("PNG", "JPEG")
BACKGROUND = "background"


class BadPicture(ValueError):
    """A client's picture that cannot be served (the message says why)."""


def refused(message: str) -> Any:
    """The client's mistake: INVALID_ARG, Triton's 400 (not INTERNAL, its 500)."""
    return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)


def decode(value: bytes, most: int) -> Image.Image:
    """A PNG or JPEG of at most `most` pixels a side, as grey levels."""
    try:
        with Image.open(io.BytesIO(value), formats=FORMATS) as image:
            if image.height > most or image.width > most:  # header only so far
                raise BadPicture(f"picture is {image.width}x{image.height}, larger than {most}")
            return image.convert("L")
    except BadPicture:
        raise
    except Exception as exc:  # Pillow raises many types for bytes that are not a picture
        raise BadPicture(f"not a PNG or JPEG picture ({type(exc).__name__}: {exc})") from exc


def answer(mask: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The REST service's answer for one mask: PNG, each class's area, the largest class."""
    areas = np.bincount(mask.reshape(-1), minlength=len(classes))
    shown = {n: int(a) for n, a in zip(classes, areas, strict=True) if a and n != BACKGROUND}
    encoded = io.BytesIO()
    Image.fromarray(mask, mode="L").save(encoded, "PNG")
    return {
        "label": max(shown, key=shown.__getitem__) if shown else BACKGROUND,
        "areas": shown,
        "mask": base64.b64encode(encoded.getvalue()).decode(),
        "classes": classes,
    }


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.model = parameters["model"]
        self.height, self.width = int(parameters["height"]), int(parameters["width"])
        self.most = int(parameters["max_side"])
        self.classes = json.loads(parameters["classes"])

    def execute(self, requests: list[Any]) -> list[Any]:
        pictures, owners, responses = [], [], [None] * len(requests)
        for i, request in enumerate(requests):
            encoded = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
            try:
                decoded = [decode(bytes(v), self.most) for v in encoded]
            except BadPicture as exc:
                responses[i] = pb_utils.InferenceResponse(error=refused(str(exc)))
                continue
            pictures += decoded
            owners += [i] * len(decoded)
        if pictures:
            self.segment(requests, pictures, owners, responses)
        return responses

    def segment(self, requests: list[Any], pictures: list[Image.Image], owners: list[int],
                responses: list[Any]) -> None:  # fmt: skip
        """One request to the model for every picture; each request's masks back."""
        resized = np.stack(
            [
                np.asarray(
                    p
                    if p.size == (self.width, self.height)
                    else p.resize((self.width, self.height), Image.Resampling.BILINEAR)
                )
                for p in pictures
            ]
        )
        inner = pb_utils.InferenceRequest(
            model_name=self.model,
            requested_output_names=["label", "areas"],
            inputs=[pb_utils.Tensor("image", resized.astype(np.uint8))],
        ).exec()
        if inner.has_error():
            for i in set(owners):
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(inner.error().message()))
                )
            return
        labels = pb_utils.get_output_tensor_by_name(inner, "label").as_numpy()
        areas = pb_utils.get_output_tensor_by_name(inner, "areas").as_numpy()
        owned = np.array(owners)
        for i in sorted(set(owners)):
            rows = np.flatnonzero(owned == i)
            answers = []
            for r in rows:
                mask = Image.fromarray(labels[r].astype(np.uint8), mode="L")
                if pictures[r].size != mask.size:  # back to the picture's own size
                    mask = mask.resize(pictures[r].size, Image.Resampling.NEAREST)
                answers.append(json.dumps(answer(np.asarray(mask), self.classes)).encode())
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("label", labels[rows].astype(np.uint8)),
                    pb_utils.Tensor("areas", areas[rows].astype(np.int64)),
                    pb_utils.Tensor("masks", np.array(answers, dtype=object).reshape(-1, 1)),
                ]
            )
