"""The framework-free core of a model service: parse, route, infer, account.

The ASGI app (services.api.app) and the BentoML service (services.bento) both drive this one
object, so the contract cannot differ between them.
"""

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from contract.catalog import ModelSpec
from contract.feeds import logged_tensors, one_at_a_time
from contract.settings import get_settings
from contract.tasks import LABEL, SCORE
from services.api import auth, feedback
from services.api.accesslog import AccessLog
from services.api.entities import EntityRequests
from services.api.errors import InputError, OverCapacity, TooLate, field_error
from services.api.feedback_inputs import feedback_model
from services.api.inputs import (
    describe_errors,
    encodes_text,
    metric_field,
    record_model,
    records_limit,
    request_model,
)
from services.api.predlog import PredictionLog, open_sink, record_row, tensor_row
from services.api.routing import Assignment, Lineup
from services.api.runtime import LoadedModel
from services.api.settings import ServeSettings
from services.api.store import ModelStore
from services.api.telemetry import ServiceMetrics

log = logging.getLogger("services.requests")
shadow_log = logging.getLogger("services.shadow")
T = TypeVar("T")
PARSE_INLINE_BYTES = 64 * 1024
# a batch starts only where this many of the line's recent runs fit in what is left of the
# timeout: a recording that waited its 5 s budget on a CPU oversubscribed twice took over 5 s
# more to run, and its client had a 504 where a 503 with Retry-After was due
RUN_MARGIN = 2.0
# ...judged only for a batch that waited behind others: one that found the line free always
# runs, so a single slow run (a cold start) cannot shed every later batch, and the line's
# average keeps learning what a run costs now
RUN_MARGIN_AFTER_S = 0.1


def line_budget(spec: ModelSpec, queue_timeout_s: float) -> float:
    """How long a batch may wait in the model's inference line before it is shed: the
    model's p99 objective where that is longer than SERVE_QUEUE_TIMEOUT_S (0: never shed).
    A recording takes most of a second and has a 5 s objective: with a 0.25 s line, a second
    recording arriving while one ran was refused, though its answer would have come in time."""
    if not queue_timeout_s:
        return 0.0
    return max(queue_timeout_s, spec.slo.p99_ms / 1000)


@dataclass(frozen=True)
class Batch:
    """A /predict request's valid records, in the order of its answers (what a shadow model
    is scored on), and what the log keeps of each one's outputs beside it
    (LoadedModel.drift_inputs: an image's embedding)."""

    records: list[BaseModel]
    logged: list[dict[str, Any]]


class ModelService:
    """One catalog entry served: its request models, its loaded versions, its metrics."""

    def __init__(self, spec: ModelSpec, settings: ServeSettings) -> None:
        self.spec, self.settings = spec, settings
        self.record_model = record_model(spec)
        self.api_keys = auth.Tokens.from_settings(
            "inference", settings.api_keys, settings.api_keys_file, name="SERVE_API_KEYS"
        )
        self.admin = auth.Tokens.from_settings(
            "admin", settings.admin_token, settings.admin_token_file, name="SERVE_ADMIN_TOKEN"
        )
        self.feedback_tokens = auth.Tokens.from_settings(
            "feedback",
            settings.feedback_token,
            settings.feedback_token_file,
            name="SERVE_FEEDBACK_TOKEN",
        )
        self.max_records = records_limit(spec, settings.max_records)  # a photo model's fewer
        # a photo's inference takes 0.1-0.3 s, a recording's seconds, a transformer's review
        # tens of ms: never on the event loop, whatever the count
        slow = one_at_a_time(spec) or encodes_text(spec)
        self.inline_max_records = 0 if slow else settings.inline_max_records
        self.line_budget_s = line_budget(spec, settings.queue_timeout_s)
        # nor their decoding: a small body may be a picture or a recording that compresses well
        # (30 s of quiet speech is a few KB of FLAC, and decodes to 480,000 samples)
        self.parse_inline_bytes = 0 if one_at_a_time(spec) else PARSE_INLINE_BYTES
        self.request_model = request_model(spec, self.record_model, self.max_records)
        self.feedback_model = feedback_model(spec, settings.max_records)
        # /predict's bodies: parsed from JSON bytes, whose parsers refuse lone surrogates
        # (inputs._text); the models above check them for every other way in and the docs
        self.json_record_model = record_model(spec, from_json=True)
        self.json_request_model = request_model(spec, self.json_record_model, self.max_records)
        self.metrics = ServiceMetrics(spec.task)
        self.metrics.set_objective(spec)
        self.access_log = AccessLog()
        store = ModelStore(
            get_settings().mlflow_tracking_uri, settings.cache_dir, settings.registry_timeout_s
        )
        self.lineup = Lineup(spec, settings, store, self.metrics)
        self.prediction_log = PredictionLog(
            open_sink(settings.prediction_log, settings.prediction_log_timeout_s),
            self._logged,
            max_bytes=settings.prediction_log_max_bytes,
        )
        for counter in (self.metrics.log_rows, self.metrics.log_errors):  # 0, so increase() sees
            self.metrics.child(counter, (spec.key,))  # the first error
        for status in (feedback.STORED, feedback.DUPLICATE, "refused"):
            self.metrics.child(self.metrics.feedback, (spec.key, status))
        self._inference: concurrent.futures.ThreadPoolExecutor | None = None
        # the inference line: batches waiting in it, and a batch's run time (moving average)
        self._line = threading.Lock()
        self._waiting, self._run_s = 0, 0.0
        self.entities: EntityRequests | None = None
        self.features_problem = ""  # why entity-keyed requests cannot be served, if they can't
        if spec.features:
            self._open_features(spec, settings)

    def _open_features(self, spec: ModelSpec, settings: ServeSettings) -> None:
        """The online store for entity keys; without it, records are still served."""
        from services.api.features import OnlineFeatures  # imports Feast: only where used

        try:
            online = OnlineFeatures(spec, settings.feature_root)
        except Exception as exc:  # Feast raises its own types per registry and store kind
            self.features_problem = f"feature store unavailable ({type(exc).__name__}: {exc})"
            log.error("%s: %s; entity-keyed requests get 503", spec.key, self.features_problem)
            return
        self.entities = EntityRequests(spec, online, self.metrics)
        try:
            online.warm()
        except Exception as exc:  # the requests will say what is wrong; starting goes on
            log.warning("%s: warming the online store failed: %s", spec.key, exc)

    def parse(self, body: bytes) -> tuple[list[tuple[int, BaseModel]], dict[int, Any]]:
        """(index, record) of the valid records and field errors of the others."""
        try:
            request = self.json_request_model.model_validate_json(body)
            return list(enumerate(request.records)), {}  # type: ignore[attr-defined]
        except ValidationError:
            pass  # find out which records are at fault, and serve the others
        records = self._envelope(body)
        accepted, invalid = [], {}
        for index, record in enumerate(records):
            try:
                accepted.append((index, self.json_record_model.model_validate(record)))
            except ValidationError as exc:
                invalid[index] = describe_errors(exc, ("records", index))
                for error in invalid[index]:
                    name = metric_field(self.spec.fields, error["field"])
                    self.metrics.child(self.metrics.record_errors, (self.spec.key, name)).inc()
        if not accepted:
            detail = [e for errors in invalid.values() for e in errors]
            raise InputError(400, f"no valid record among {len(records)}", detail)
        return accepted, invalid

    def _object(self, body: bytes) -> dict[str, Any]:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise field_error(400, "body", f"not valid JSON ({exc})") from exc
        if not isinstance(payload, dict):
            shape = {"records": [{name: "..." for name in self.spec.fields}]}
            raise field_error(400, "body", "must be a JSON object", shape)
        return payload

    def _envelope(self, body: bytes) -> list[Any]:
        payload = self._object(body)
        shape = {"records": [{name: "..." for name in self.spec.fields}]}
        for extra in sorted(set(payload) - {"records"}):
            raise field_error(400, extra, "unexpected top-level field", shape)
        records = payload.get("records")
        if not isinstance(records, list) or not records:
            raise field_error(400, "records", "must be a non-empty list of records", shape)
        if len(records) > self.max_records:
            raise field_error(
                413,
                "records",
                f"{len(records)} records is over the limit",
                {"max_records": self.max_records},
            )
        return records

    async def run(self, work: Callable[..., T], size: int, *args: Any) -> T:
        """I/O (feature lookups): small batches on the event loop; large ones in a thread,
        bounded by the timeout."""
        if size <= self.settings.inline_max_records:
            return work(*args)
        return await asyncio.wait_for(run_in_threadpool(work, *args), self.settings.timeout_s)

    def stop_inference(self) -> None:
        """At shutdown: batches still in line are dropped (their requests are gone)."""
        if self._inference is not None:
            self._inference.shutdown(wait=False, cancel_futures=True)

    async def infer(self, work: Callable[..., T], size: int, *args: Any) -> T:
        """Inference: small batches on the event loop; large ones in the inference threads
        (`inference_threads`, one by default), in line, bounded by the timeout: a batch
        still waiting when it passes is cancelled, not run for a client that got its 504.
        A batch that waited in line longer than its budget (line_budget: SERVE_QUEUE_TIMEOUT_S,
        or the model's p99 objective where longer) is not run either but
        shed (OverCapacity: a 503 with Retry-After), as the guard sheds a request that
        queued before it: a model slower than its traffic (a detector's 1000x1000 tiles at
        ~50 ms each) would otherwise grow a line of seconds with every answer late. Nor is one
        run whose answer would likely come past the timeout (RUN_MARGIN of the line's recent
        run time): it is shed as well, not answered with a 504."""
        if size <= self.inline_max_records:
            return work(*args)
        if self._inference is None:
            self._inference = concurrent.futures.ThreadPoolExecutor(
                self.settings.inference_threads, "inference"
            )
        budget, queued = self.line_budget_s, time.monotonic()
        self.admit()
        entry = {"waiting": True}  # in line, counted in _waiting
        with self._line:
            self._waiting += 1

        def in_line() -> T:
            started = time.monotonic()
            with self._line:
                gone, entry["waiting"] = not entry["waiting"], False
                self._waiting -= 0 if gone else 1
                run_s = self._run_s
            if gone:  # its client had its 504: the timeout took it out of the line
                raise TimeoutError("inference started after the service's timeout")
            waited = started - queued
            if budget and waited > budget:
                raise OverCapacity(waited, budget)
            late = waited + RUN_MARGIN * run_s > self.settings.timeout_s
            if budget and waited > RUN_MARGIN_AFTER_S and late:
                raise TooLate(waited, run_s, self.settings.timeout_s)
            try:
                return work(*args)
            finally:
                with self._line:  # a moving average: the line's cost as it is now
                    ran = time.monotonic() - started
                    self._run_s += (0.2 if self._run_s else 1.0) * (ran - self._run_s)

        future = asyncio.get_running_loop().run_in_executor(self._inference, in_line)
        try:
            return await asyncio.wait_for(future, self.settings.timeout_s)
        except OverCapacity:
            self.metrics.inc(self.metrics.child(self.metrics.shed, (self.spec.key, "inference")))
            raise
        finally:
            with self._line:  # cancelled before it ran (the timeout): out of the line's count
                if entry["waiting"]:
                    entry["waiting"] = False
                    self._waiting -= 1

    def admit(self) -> None:
        """Refuse a request at once (OverCapacity, before its body is parsed) where the
        batches already in the inference line would keep it waiting past its budget
        (line_budget): under overload a detector's requests would otherwise each
        decode a 1000x1000 picture, on the cores the running inference needs, only to be
        shed in line."""
        budget = self.line_budget_s
        with self._line:
            waiting, ahead_s = self._waiting, self._waiting * self._run_s
        if budget and waiting and ahead_s > budget:
            self.metrics.inc(self.metrics.child(self.metrics.shed, (self.spec.key, "inference")))
            raise OverCapacity(ahead_s, budget, waiting)

    async def predict(
        self,
        body: bytes,
        request_id: str,
        unit: str | None = None,
        state: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], Assignment, Batch]:
        """(answer, the models assigned, the valid records: what a shadow model is scored on
        and the log keeps);
        `unit` draws champion or challenger (the request id where none is given); `state`
        (the request's, where the guard accounts it) gets the version that served as soon
        as it is drawn, so a failure after that counts against that version."""
        if self.entities is not None and self.entities.asked_in(body):
            return await self.predict_entities(body, request_id, unit, state)
        if self.features_problem and EntityRequests.markers(self.spec) & set(self._object(body)):
            raise InputError(503, self.features_problem, [])
        threaded = len(body) > self.parse_inline_bytes
        if threaded:  # a body worth parsing in a thread: is there room?
            self.admit()
        with self.metrics.timed(self.spec.key, "parse"):
            if threaded:  # a big batch, or decoding, must not stall the event loop
                accepted, invalid = await run_in_threadpool(self.parse, body)
            else:
                accepted, invalid = self.parse(body)
        return await self.answer(accepted, invalid, request_id, unit, state)

    async def predict_entities(
        self,
        body: bytes,
        request_id: str,
        unit: str | None = None,
        state: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], Assignment, Batch]:
        """Entity keys in: online features fetched, then the same prediction as for records."""
        entities = self.entities
        assert entities is not None
        payload = self._object(body)
        rows, invalid = entities.parse(payload, self.settings.max_records)
        fetched = await self.run(entities.fetch, len(rows), [row for _, row in rows])
        sent_as = next(iter(payload))  # parse accepts exactly one field
        accepted, extras = entities.records(rows, fetched, invalid, self.record_model, sent_as)
        response, assignment, batch = await self.answer(accepted, invalid, request_id, unit, state)
        for index, extra in extras.items():
            response["predictions"][index] |= extra
        response["feature_service"] = entities.online.service_name
        stale = sum(1 for extra in extras.values() if extra["stale"])
        if stale:
            response["stale_records"] = stale
        return response, assignment, batch

    async def entity_feeds(
        self, model: LoadedModel, rows: list[dict[str, Any]]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """OIP v2 with entity keys: tensors of the online features (every entity must be known)."""
        entities = self.entities
        if entities is None:
            raise InputError(503, self.features_problem or "no feature store", [])
        parsed, invalid = entities.parse({"entities": rows}, self.settings.max_records)
        if invalid:  # a tensor request is all or nothing
            raise InputError(400, "invalid entity rows", [e for v in invalid.values() for e in v])
        fetched = await self.run(entities.fetch, len(parsed), [row for _, row in parsed])
        accepted, extras = entities.records(parsed, fetched, invalid, self.record_model)
        if invalid:
            detail = [e for v in invalid.values() for e in v]
            status = 404 if all(e.get("status") == 404 for e in detail) else 400
            raise InputError(status, f"{len(invalid)} of {len(rows)} entities unservable", detail)
        stale = [extras[i][entities.key] for i in sorted(extras) if extras[i]["stale"]]
        looked_up = {"feature_service": entities.online.service_name, "stale_entities": stale}
        return model.feeds([record for _, record in accepted]), looked_up

    async def answer(
        self,
        accepted: list[tuple[int, BaseModel]],
        invalid: dict[int, Any],
        request_id: str,
        unit: str | None = None,
        state: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], Assignment, Batch]:
        """Predict the accepted records; answers in request order, errors in place."""
        assignment = self.lineup.assign(unit or request_id)
        model = assignment.serving
        if state is not None:
            state["served"] = (model.version, model.alias)
        records = [record for _, record in accepted]
        with self.metrics.timed(self.spec.key, "inference"):
            chunk = self.settings.inference_chunk
            result = await self.infer(lambda: model.predict(records, chunk), len(records))
            predictions = model.format(result)
            self.observe(model, predictions, len(records) + len(invalid), "/predict")
            answers: list[Any] = [None] * (len(accepted) + len(invalid))
            for (index, _), prediction in zip(accepted, predictions, strict=True):
                answers[index] = prediction
        for index, errors in invalid.items():
            answers[index] = {"error": errors}
        response: dict[str, Any] = {
            "model": model.name,
            "version": model.version,
            "alias": model.alias,
            "request_id": request_id,
            "predictions": answers,
        }
        if invalid:
            response["invalid_records"] = len(invalid)
        return response, assignment, Batch(records, model.drift_inputs(result))

    def _logged(self, predictions: int, seconds: float, error: Exception | None) -> None:
        key = (self.spec.key,)
        metrics = self.metrics
        metrics.observe(metrics.child(metrics.log_flush, key), seconds)
        if error is None:
            metrics.inc(metrics.child(metrics.log_rows, key), predictions)
        else:
            metrics.inc(metrics.child(metrics.log_errors, key))

    async def log_records(self, answer: dict[str, Any], batch: Batch) -> None:
        """Store a /predict answer's predictions; returns once they are committed."""
        if self.prediction_log.enabled:
            with self.metrics.timed(self.spec.key, "log"):
                max_bytes = self.prediction_log.max_bytes
                row = record_row(
                    answer, batch.records, "/predict", time.time(), max_bytes, batch.logged
                )
                await self.prediction_log.append([row])

    @staticmethod
    def answers(model: LoadedModel, result: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """An OIP v2 request's outputs as the task's answers; where the client asked for
        some outputs only, each record's outputs as they are."""
        try:
            return model.format(result)
        except KeyError:
            size = len(next(iter(result.values()))) if result else 0
            return [{n: v[i].tolist() for n, v in result.items()} for i in range(size)]

    async def log_tensors(
        self,
        model: LoadedModel,
        feeds: dict[str, np.ndarray],
        result: dict[str, np.ndarray],
        predictions: list[dict[str, Any]],
        request_id: str,
    ) -> None:
        """Store an OIP v2 request's predictions; returns once they are committed. A
        recording is kept as its summary, as /predict's records keep it (logged_tensors)."""
        if not self.prediction_log.enabled:
            return
        head = (time.time(), request_id, model.name, model.version, model.alias, "/v2/infer")
        logged = logged_tensors(feeds, self.spec)
        row = tensor_row(head, logged, predictions, model.drift_inputs(result))
        await self.prediction_log.append([row])

    def store_feedback(self, items: list[feedback.Item]) -> list[str]:
        """Store true outcomes beside the log (in a thread: a database round trip); each
        one's status. UnknownPrediction, ConflictingOutcome: nothing stored."""
        settings = self.settings
        try:
            statuses = feedback.store(
                settings.prediction_log, self.spec.key, items,
                timeout_s=settings.prediction_log_timeout_s,
            )  # fmt: skip
        except (feedback.UnknownPrediction, feedback.ConflictingOutcome):
            self.metrics.child(self.metrics.feedback, (self.spec.key, "refused")).inc(len(items))
            raise
        for status in (feedback.STORED, feedback.DUPLICATE):
            if count := statuses.count(status):
                self.metrics.child(self.metrics.feedback, (self.spec.key, status)).inc(count)
        return statuses

    def observe(
        self, model: LoadedModel, predictions: list[dict[str, Any]], size: int, path: str
    ) -> None:
        """The batch size, and each answer's score and label as the drift view reads them
        (the task's `answered`)."""
        scores, labels = [], []
        for prediction in predictions:
            seen = self.spec.task_kind.answered(self.spec, prediction)
            if (score := seen.get(SCORE)) is not None:
                scores.append(float(score))
            if (label := seen.get(LABEL)) is not None:
                labels.append(str(label))
        self.metrics.observe(self.metrics.child(self.metrics.batch, (model.name, path)), size)
        self.metrics.observe_predictions(model.name, model.version, model.alias, scores, labels)

    def score_shadow(
        self, assignment: Assignment, records: list[BaseModel], request_id: str, served: list[Any]
    ) -> None:
        """Score the challenger on the same records and log both answers (after the response)."""
        shadow = assignment.shadow
        assert shadow is not None
        try:
            result = shadow.predict(records, self.settings.inference_chunk)
            predictions = shadow.format(result)
        except Exception:  # the challenger must never affect the answered request
            shadow_log.exception(
                "shadow %s v%s failed on %s", shadow.name, shadow.version, request_id
            )
            return
        champion = [p for p in served if "error" not in p]
        for ours, theirs in zip(champion, predictions, strict=True):
            agreement = (
                "same"
                if ours.get("label", ours.get("value")) == theirs.get("label", theirs.get("value"))
                else "different"
            )
            self.metrics.child(self.metrics.shadow, (shadow.name, shadow.version, agreement)).inc()
        answer = {"request_id": request_id, "model": shadow.name, "version": shadow.version}
        row = record_row(
            answer | {"alias": shadow.alias, "predictions": predictions},
            records,
            "shadow",
            time.time(),
            self.prediction_log.max_bytes,
            shadow.drift_inputs(result),
        )
        self.prediction_log.append_threadsafe([row])  # after the response: nothing to hold up
        shadow_log.info(
            "%s",
            orjson.dumps(
                {
                    "request_id": request_id,
                    "model": shadow.name,
                    "champion": {
                        "version": assignment.serving.version,
                        "predictions": champion,
                    },
                    "challenger": {"version": shadow.version, "predictions": predictions},
                }
            ).decode(),
        )
