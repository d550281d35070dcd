"""One example prediction per model from the running local stack (`make serve` prints it)."""

import json
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from contract import paths
from contract.catalog import ModelSpec, load_catalog
from contract.paths import ROOT
from services.tools.examples import as_entities, as_records, client_tokenizer
from services.tools.stack import BASE_PORT, TRITON_PORTS


def summary(prediction: dict[str, Any], positive: str) -> str:
    if "value" in prediction:
        return f"value {prediction['value']:,.2f}"
    if "forecast" in prediction:  # the horizon's steps
        steps = prediction["forecast"]
        return f"forecast of {len(steps)} steps, {min(steps):,.2f} to {max(steps):,.2f}"
    if "recommendations" in prediction:  # the top of the list
        top = prediction["recommendations"][0] if prediction["recommendations"] else {}
        names = [str(v) for k, v in top.items() if k != "score"]
        kind = "popular (fallback)" if prediction["fallback"] else "personalised"
        return f"{len(prediction['recommendations'])} {kind}, first {' '.join(names)}"
    if "results" in prediction:  # the best match
        results = prediction["results"]
        if not results:
            return "no results"
        best = results[0]
        text = best["text"][:60] + ("..." if len(best["text"]) > 60 else "")
        return f"{len(results)} results, best {best['score']:.3f}: {text!r}"
    if "probability" in prediction:
        return f"{prediction['label']} (P({positive}) = {prediction['probability']:.3f})"
    if "distance" in prediction:
        return f"{prediction['label']} (distance {prediction['distance']:.3f})"
    if "score" in prediction:
        score, threshold = prediction["score"], prediction["threshold"]
        return f"{prediction['label']} (score {score:.3f}, threshold {threshold:.3f})"
    if "boxes" in prediction:  # detection
        best = max((b["score"] for b in prediction["boxes"]), default=0.0)
        return f"{prediction['count']} boxes, best score {best:.3f}"
    if "areas" in prediction:  # segmentation: the largest class
        shown = ", ".join(f"{k} {v} px" for k, v in prediction["areas"].items())
        return f"{prediction['label']} ({shown or 'nothing but background'})"
    if "text" in prediction:  # a transcript
        text = prediction["text"][:60] + ("..." if len(prediction["text"]) > 60 else "")
        seconds, confidence = prediction["seconds"], prediction["confidence"]
        return f"{text!r} ({seconds:.1f} s of speech, confidence {confidence:.2f})"
    top = max(prediction["probabilities"].values())
    return f"{prediction['label']} (P = {top:.3f})"


def show(key: str, body: dict[str, Any], url: str, positive: str, hidden: dict[str, str]) -> bool:
    """The request (a picture or a recording by name, `hidden`) and the answer's summary."""
    first = body["records"][0] if "records" in body else body
    shown = {k: hidden.get(k, v) for k, v in first.items()}
    text = json.dumps(shown)
    print(f"\n{key}  POST {url}/predict  {text[:110]}{'...' if len(text) > 110 else ''}")
    try:
        response = httpx.post(f"{url}/predict", json=body, timeout=30)
    except httpx.TransportError as exc:
        print(f"  not answering: {exc}")
        return False
    if response.status_code != 200:
        print(f"  {response.status_code}: {response.text[:300]}")
        return False
    body = response.json()
    first = body["predictions"][0]
    served = f"[v{body['version']} @{body['alias']}"
    if "feature_service" in body:  # entity-keyed: which features, and how fresh
        served += f", {body['feature_service']} of {first['feature_time'][:10]}"
        served += ", stale" if first["stale"] else ""
    print(f"  -> {summary(first, positive)}   {served}]")
    return True


def triton(key: str, frame: pd.DataFrame, spec: ModelSpec, root: Path = ROOT) -> bool:
    """The same input through PyTriton, with tritonclient over HTTP and gRPC: the graph's
    label (an image, a window of series, a transformer's text: the client tokenizes, with
    the tokenizer in the graph's metadata), or a search encoder's embedding."""
    import numpy as np
    import tritonclient.grpc as grpc
    import tritonclient.http as http
    from tritonclient.utils import np_to_triton_dtype

    from contract.feeds import onnx_feeds
    from contract.tokens import encoder_inputs

    graph = paths.onnx_model(key, root)
    bls = graph.parent / "triton" / f"{key}_image"
    if bls.is_dir():  # encoded pictures to the BLS model
        (record,) = as_records(frame, spec)
        return triton_pictures(key, record[next(iter(spec.fields))])
    tok = client_tokenizer(graph)
    if tok is not None:  # a search's encoder, a fine-tuned transformer: token ids in
        feeds = encoder_inputs(tok, frame[next(iter(spec.fields))].tolist())
    else:
        feeds = onnx_feeds(frame, spec)
    metadata = http.InferenceServerClient(f"127.0.0.1:{TRITON_PORTS['http']}").get_model_metadata
    output = metadata(key)["outputs"][0]["name"]  # a label, or a search encoder's embedding
    answers = []
    for module, port in ((http, TRITON_PORTS["http"]), (grpc, TRITON_PORTS["grpc"])):
        tensors = []
        for name, array in feeds.items():
            tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        client = module.InferenceServerClient(f"127.0.0.1:{port}")
        answers.append(client.infer(key, tensors).as_numpy(output))
    classes = spec.class_names or []
    if output == "label":
        shown = [classes[int(a.reshape(-1)[0])] for a in answers]
        same = shown[0] == shown[1]
    else:
        shown = [f"embedding of {a.shape[-1]}" for a in answers]
        same = bool(np.allclose(answers[0], answers[1], atol=1e-5))
    print(
        f"  Triton (PyTriton) HTTP :{TRITON_PORTS['http']} / gRPC :{TRITON_PORTS['grpc']}"
        f" -> {shown[0]} / {shown[1]}"
    )
    return same


def triton_pictures(key: str, image: Any) -> bool:
    """An encoded picture (a photo's base64, or pixels sent as PNG) to `<key>_image`, the
    BLS model that decodes it, runs the graph and answers as the REST service does."""
    import base64
    import io

    import numpy as np
    import tritonclient.grpc as grpc
    import tritonclient.http as http
    from PIL import Image

    if isinstance(image, str):
        encoded = base64.b64decode(image)
    else:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
        encoded = buffer.getvalue()
    answers = []
    for module, port in ((http, TRITON_PORTS["http"]), (grpc, TRITON_PORTS["grpc"])):
        tensor = module.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[encoded]], dtype=object))
        client = module.InferenceServerClient(f"127.0.0.1:{port}")
        result = client.infer(f"{key}_image", [tensor])
        (answer,) = (o for o in ("detections", "masks") if result.get_output(o) is not None)
        answers.append(json.loads(result.as_numpy(answer)[0, 0]))
    print(
        f"  Triton (BLS {key}_image) HTTP :{TRITON_PORTS['http']} / gRPC :{TRITON_PORTS['grpc']}"
        f" -> {summary(answers[0], '')} / {summary(answers[1], '')}"
    )
    return bool(answers[0] == answers[1])


def main(root: Path = ROOT) -> int:
    """Exit 0 when every model (and Triton) answered."""
    ok = True
    for index, (key, spec) in enumerate(load_catalog().items()):
        frame = pd.read_parquet(paths.split_dir(key, root) / "test.parquet").head(1)
        (record,) = as_records(frame, spec)
        positive = spec.class_names[-1] if spec.class_names else ""  # a binary P(positive)
        url = f"http://127.0.0.1:{BASE_PORT + index}"
        hidden = {
            name: "<recording>" if field.type == "audio" else "<picture>"
            for name, field in spec.fields.items()
            if field.type in ("image", "photo", "audio")
        }
        ok &= show(key, {"records": [record]}, url, positive, hidden)
        if spec.features is not None:  # the same row by entity key, features from Feast
            ok &= show(key, as_entities(frame, spec), url, positive, hidden)
        if spec.triton is not None:
            try:
                ok &= triton(key, frame, spec, root)
            except Exception as exc:  # the demo reports, it does not crash
                print(f"  Triton not answering: {exc}")
                ok = False
    return 0 if ok else 1
