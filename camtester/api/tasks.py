"""`/tasks`: submit tasks, one or a batch, and read their status and results."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from typing import Any

from flask import Response, current_app, request
from flask_restx import Namespace, Resource, fields

from camtester import metrics
from camtester.api.errors import COMMON_RESPONSES
from camtester.errors import BrokerUnavailable, InvalidInput, NotFound, TooLarge
from camtester.results import utc_now_iso
from camtester.settings import Settings
from camtester.spec import public_measurement, validate_task
from camtester.store.tasks import TaskStore
from camtester.tasks.publish import publish

logger = logging.getLogger(__name__)

ns = Namespace(
    "tasks", description="Camera tests: submit, then read the result", path="/"
)

task_input = ns.model(
    "TaskInput",
    {
        "type": fields.String(
            required=True, enum=["ping", "probe", "check", "complex"]
        ),
        "geo_location": fields.String(required=True, example="moscow"),
        "payload": fields.Raw(
            description="ping: host or {host, count, interval, timeout, thresholds}; "
            "probe/check: uri or {uri, duration, transport, thresholds, expected}",
            example={"uri": "rtsp://cam-17.example/live", "duration": 5},
        ),
        "payloads": fields.List(
            fields.Raw, description="complex only: subtasks {type, payload}"
        ),
    },
)
accepted = ns.model("Accepted", {"id": fields.String(required=True)})
batch_accepted = ns.model("BatchAccepted", {"ids": fields.List(fields.String)})
result_model = ns.model(
    "Result",
    {
        "ok": fields.Boolean(required=True),
        "time": fields.String(required=True),
        "payload": fields.Raw(),
        "error": fields.Raw(),
        "deviations": fields.List(fields.Raw),
    },
)
task_model = ns.model(
    "Task",
    {
        "id": fields.String(required=True),
        "type": fields.String(required=True),
        "geo_location": fields.String(required=True),
        "status": fields.String(enum=["pending", "running", "done", "failed"]),
        "created_at": fields.String(),
        "updated_at": fields.String(),
        "payload": fields.Raw(),
        "payloads": fields.List(fields.Raw),
        "result": fields.Raw(),
        "results": fields.List(fields.Raw),
        "current_index": fields.Integer(),
        "verdict": fields.String(enum=["ok", "warning", "critical"]),
        "snapshot_url": fields.String(),
    },
)


def _settings() -> Settings:
    settings: Settings = current_app.extensions["camtester.settings"]
    return settings


def _store() -> TaskStore:
    store: TaskStore = current_app.extensions["camtester.tasks"]
    return store


def _json_body() -> Any:
    body = request.get_json(silent=True)
    if body is None:
        raise InvalidInput("request body must be JSON (Content-Type: application/json)")
    return body


def stored_document(task_id: str, task: dict[str, Any]) -> dict[str, Any]:
    """What the store keeps of a task: its normalised form, credentials masked."""
    document: dict[str, Any] = {
        "id": task_id,
        "type": task["type"],
        "geo_location": task["geo_location"],
        "created_at": utc_now_iso(),
    }
    if task["type"] == "complex":
        document["payloads"] = [public_measurement(s) for s in task["subtasks"]]
    else:
        document["payload"] = public_measurement(task)["payload"]
    return document


def submit(tasks: list[dict[str, Any]]) -> list[str]:
    """Store validated tasks as pending, then queue them; undo the store on 503."""
    ids = [str(uuid.uuid4()) for _ in tasks]
    store = _store()
    store.create([stored_document(i, t) for i, t in zip(ids, tasks, strict=True)])

    try:
        publish(
            _settings(),
            [(i, 0, {**t, "id": i}) for i, t in zip(ids, tasks, strict=True)],
        )
    except BrokerUnavailable:
        # A task nobody will ever run must not sit as pending until its TTL.
        store.delete(ids)
        raise

    accepted = Counter((task["type"], task["geo_location"]) for task in tasks)
    for (task_type, geo), count in accepted.items():
        metrics.TASKS_ACCEPTED.labels(task_type, geo).inc(count)
    logger.info("accepted %d tasks", len(ids))
    return ids


@ns.route("/tasks")
@ns.doc(responses=COMMON_RESPONSES)
class Tasks(Resource):
    @ns.expect(task_input, validate=False)
    @ns.response(202, "Accepted", accepted)
    @ns.response(400, "Bad input; the message names the field")
    @ns.response(413, "A body larger than the API reads")
    def post(self) -> Any:
        """Validate, store and queue one task."""
        task = validate_task(_json_body(), _settings())
        (task_id,) = submit([task])
        return {"id": task_id}, 202, {"Location": f"/tasks/{task_id}"}


class BadBatchTask(InvalidInput):
    """Task `index` of a batch is not valid; nothing of the batch was stored."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


def _batch_body(limit: int) -> list[Any]:
    """The list of raw tasks, refused with 413 before any is looked at if too long."""
    body = _json_body()
    if isinstance(body, dict) and "tasks" in body:
        body = body["tasks"]
    if not isinstance(body, list) or not body:
        raise InvalidInput("body must be a non-empty list of tasks")
    if len(body) > limit:
        raise TooLarge(f"a batch may hold at most {limit} tasks; got {len(body)}")
    return body


def validate_batch(body: list[Any], settings: Settings) -> list[dict[str, Any]]:
    """Every task normalised, or BadBatchTask for the first one that is not."""
    tasks = []
    for index, raw in enumerate(body):
        try:
            tasks.append(validate_task(raw, settings, f"tasks[{index}]"))
        except InvalidInput as exc:
            raise BadBatchTask(str(exc), index) from exc
    return tasks


@ns.route("/tasks-batch")
@ns.doc(responses=COMMON_RESPONSES)
class TaskBatch(Resource):
    @ns.expect([task_input], validate=False)
    @ns.response(202, "Accepted", batch_accepted)
    @ns.response(400, "A bad task; the message and `index` name the first one")
    @ns.response(413, "More tasks than the batch limit")
    def post(self) -> Any:
        """Validate every task, then store and queue them all; ids in order."""
        body = _batch_body(_settings().max_batch_tasks)
        try:
            tasks = validate_batch(body, _settings())
        except BadBatchTask as exc:
            return {"message": str(exc), "index": exc.index}, 400
        return {"ids": submit(tasks)}, 202


def _load(task_id: str) -> dict[str, Any]:
    task = _store().get(task_id)
    if task is None:
        raise NotFound(f"task {task_id} is unknown or expired")
    return task


@ns.route("/tasks/<string:task_id>")
@ns.doc(responses=COMMON_RESPONSES)
class TaskItem(Resource):
    @ns.response(200, "The task", task_model)
    @ns.response(404, "Unknown or expired")
    def get(self, task_id: str) -> Any:
        """The task with its status and result(s)."""
        task = _load(task_id)
        if task.pop("has_snapshot"):
            task["snapshot_url"] = f"/tasks/{task_id}/snapshot.jpg"
        return task


@ns.route("/tasks/<string:task_id>/result")
@ns.doc(responses=COMMON_RESPONSES)
class TaskResult(Resource):
    @ns.response(200, "The result, or the list of a complex task's results")
    @ns.response(404, "No result yet, or unknown task")
    def get(self, task_id: str) -> Any:
        """The result; for a complex task the list of results so far."""
        task = _load(task_id)
        if task["type"] == "complex":
            if not task["results"]:
                raise NotFound(f"task {task_id} has no result yet")
            return task["results"]
        if task["result"] is None:
            raise NotFound(f"task {task_id} has no result yet")
        return task["result"]


@ns.route("/tasks/<string:task_id>/snapshot.jpg")
@ns.doc(responses=COMMON_RESPONSES)
class TaskSnapshot(Resource):
    @ns.produces(["image/jpeg", "application/json"])
    @ns.response(200, "JPEG of the picture at mid-sample")
    @ns.response(404, "No snapshot (not a probe, no picture, or expired)")
    def get(self, task_id: str) -> Any:
        """What the camera showed at mid-sample."""
        snapshot = _store().get_snapshot(task_id)
        if snapshot is None:
            raise NotFound(f"task {task_id} has no snapshot")
        return Response(snapshot, mimetype="image/jpeg")
