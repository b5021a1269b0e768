"""Logs: task id and type on every line about a task, JSON lines, no credentials.

The end-to-end test runs the API (gunicorn with camtester's logger class) and a
worker as subprocesses with `CAMTESTER_LOG_FORMAT=json` at debug level, probes
cameras with passwords in their URIs, and reads every line both wrote.
"""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from camtester.devtools.simulator import CameraSimulator
from camtester.logs import (
    JsonFormatter,
    TaskContextFilter,
    enter_celery_task,
    leave_celery_task,
    task_context,
)
from tests.fixtures.media import SECURE_PASSWORD, SECURE_USER
from tests.fixtures.services import (
    LOCAL_QUEUES,
    REPO,
    VENV_BIN,
    ApiClient,
    RedisServer,
    free_port,
    service_env,
    wait_for_port,
)

TASK_ID = "0b7e3f0e-6c55-4a4e-9d3c-8d6f2f0d9a10"
CELERY_ID = "5f0c8d9e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"


def capture(logger_name: str) -> tuple[logging.Logger, io.StringIO]:
    """A logger writing JSON lines through camtester's filter into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TaskContextFilter())
    logger = logging.getLogger(logger_name)
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, buffer


def lines_of(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_lines_inside_a_task_context_carry_its_id_and_type() -> None:
    logger, buffer = capture("camtester.test.context")

    with task_context(TASK_ID, "probe"):
        logger.info("reading %s", "rtsp://admin:secret@cam/live")
    logger.info("between tasks")

    inside, outside = lines_of(buffer)
    assert (inside["task_id"], inside["task_type"]) == (TASK_ID, "probe")
    assert inside["message"] == "reading rtsp://***@cam/live"
    assert (outside["task_id"], outside["task_type"]) == ("-", "-")


def test_celerys_received_line_names_the_camtester_task_from_its_argsrepr() -> None:
    logger, buffer = capture("camtester.test.celery")
    masked = {"type": "check", "target": "rtsp://***@cam/live", "options": {}}
    context = {
        "id": CELERY_ID,
        "name": "camtester.check",
        "args": repr((TASK_ID, 0, masked)),
        "kwargs": "{}",
        "eta": None,
    }

    # Celery logs "received" as a format mapping plus extra={"data": mapping}.
    logger.info("Task %(name)s[%(id)s] received", context, extra={"data": context})
    aggregate = {**context, "id": "agg", "name": "camtester.aggregate"}
    aggregate["args"] = repr((TASK_ID, 0, "complex", "north"))
    logger.info("Task %(name)s[%(id)s] received", aggregate)
    # A later line naming only the Celery id (a retry) is still recognised.
    logger.info(
        "Task %(name)s[%(id)s] retry: %(exc)s",
        {**context, "args": None, "exc": "Retry in 1s"},
    )

    received, aggregated, retry = lines_of(buffer)
    assert received["message"] == f"Task camtester.check[{CELERY_ID}] received"
    assert (received["task_id"], received["task_type"]) == (TASK_ID, "check")
    assert received["celery_id"] == CELERY_ID
    assert (aggregated["task_id"], aggregated["task_type"]) == (TASK_ID, "complex")
    assert (retry["task_id"], retry["task_type"]) == (TASK_ID, "check")


def test_a_celery_task_context_lasts_from_prerun_to_postrun() -> None:
    logger, buffer = capture("camtester.test.prerun")

    enter_celery_task("c1", (TASK_ID, "ping"))
    logger.info("inside")
    leave_celery_task()
    logger.info("after")

    inside, after = lines_of(buffer)
    assert (inside["task_id"], inside["celery_id"]) == (TASK_ID, "c1")
    assert (after["task_id"], after["celery_id"]) == ("-", "-")


def test_exceptions_are_masked_and_stay_on_one_line() -> None:
    logger, buffer = capture("camtester.test.exception")

    try:
        raise RuntimeError("cannot open rtsp://u:pw@cam/x")
    except RuntimeError:
        logger.exception("failed")

    (line,) = buffer.getvalue().splitlines()
    entry = json.loads(line)
    assert "rtsp://***@cam/x" in entry["exception"]
    assert "pw@" not in line


def test_a_percent_encoded_uri_in_a_query_string_is_masked() -> None:
    logger, buffer = capture("camtester.test.access")

    logger.info(
        "GET /restreamers/lookup?geo_location=n&uri=rtsp%3A%2F%2Fviewer%3Ap%2540ss"
        "%40cam%2Flive&x=1 200"
    )

    (line,) = lines_of(buffer)
    assert line["message"] == (
        "GET /restreamers/lookup?geo_location=n&uri=rtsp%3A%2F%2F***%40cam%2Flive"
        "&x=1 200"
    )


def test_a_traceback_in_the_text_format_is_masked_too() -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(TaskContextFilter())
    logger = logging.getLogger("camtester.test.text")
    logger.handlers, logger.propagate = [handler], False

    try:
        raise RuntimeError("cannot open rtsp://u:pw@cam/x")
    except RuntimeError:
        logger.exception("failed")

    assert "rtsp://***@cam/x" in buffer.getvalue()
    assert "pw@" not in buffer.getvalue()


# -- end to end ---------------------------------------------------------------


class Service:
    """A subprocess whose stdout and stderr go to separate files."""

    def __init__(self, argv: list[str], env: dict[str, str], directory: Path) -> None:
        self.stdout_path = directory / "stdout"
        self.stderr_path = directory / "stderr"
        directory.mkdir(parents=True)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                argv, env=env, cwd=REPO, stdout=out, stderr=err
            )

    def wait_for_line(self, text: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.stderr_path.read_text():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} in {self.stderr_path.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class JsonRun:
    """What a JSON-logging API and worker wrote while probing three cameras."""

    def __init__(
        self, services: list[Service], ids: list[str], tasks: list[Any]
    ) -> None:
        worker, api = services
        self.ids = ids
        self.tasks = tasks
        self.worker_lines = json_lines(worker.stderr_path)
        self.api_lines = json_lines(api.stderr_path)
        self.everything = "\n".join(
            path.read_text()
            for service in services
            for path in (service.stdout_path, service.stderr_path)
        )


def start_json_services(
    tmp_path: Path, server: RedisServer, api_port: int
) -> list[Service]:
    env = service_env(
        server.url(0),
        server.url(1),
        CAMTESTER_LOG_FORMAT="json",
        CAMTESTER_LOG_LEVEL="DEBUG",
    )
    worker_argv = [str(VENV_BIN / "celery"), "-A", "camtester", "worker"]
    worker_argv += ["-Q", ",".join(LOCAL_QUEUES), "-P", "threads", "-c", "4"]
    worker_argv += ["-n", f"json{free_port()}@%h", "--without-gossip"]
    worker = Service(worker_argv, env, tmp_path / "worker")
    api_argv = [str(VENV_BIN / "gunicorn"), "--bind", f"127.0.0.1:{api_port}"]
    api_argv += ["--workers", "2", "--logger-class", "camtester.logs.GunicornLogger"]
    api = Service([*api_argv, "wsgi:app"], env, tmp_path / "api")
    return [worker, api]


@pytest.fixture(scope="module")
def json_run(
    tmp_path_factory: pytest.TempPathFactory, camera: CameraSimulator
) -> Iterator[JsonRun]:
    tmp_path = tmp_path_factory.mktemp("json-logs")
    server = RedisServer(tmp_path / "redis").start()
    port = free_port()
    services = start_json_services(tmp_path, server, port)
    try:
        services[0].wait_for_line(" ready.")
        wait_for_port(port, timeout_s=30)
        api = ApiClient(f"http://127.0.0.1:{port}")

        closed = f"rtsp://viewer:p%40ss@127.0.0.1:{free_port()}/x"
        secure = camera.url("secure", SECURE_USER, SECURE_PASSWORD)
        wrong = camera.url("secure", SECURE_USER, "not-" + SECURE_PASSWORD)
        ids = [api.submit(probe(uri)) for uri in (closed, secure, wrong)]
        tasks = [api.wait(task_id) for task_id in ids]
    finally:
        for service in reversed(services):
            service.stop()
        server.stop()
    yield JsonRun(services, ids, tasks)


def probe(uri: str) -> dict[str, Any]:
    return {
        "type": "probe",
        "geo_location": "local",
        "payload": {"uri": uri, "duration": 2},
    }


#: Loggers whose every line is about one task.
TASK_LOGGERS = re.compile(
    r"^(camtester\.(tasks|measure|probes)|celery\.app\.trace|celery\.worker\.strategy)"
)


def test_the_probes_ran_as_their_uris_say(json_run: JsonRun) -> None:
    statuses = [task["status"] for task in json_run.tasks]
    errors = [task["result"]["error"] for task in json_run.tasks]

    assert statuses == ["failed", "done", "failed"]
    assert [e and e["code"] for e in errors] == ["refused", None, "unauthorized"]


def test_every_line_is_json_and_no_line_holds_a_credential(json_run: JsonRun) -> None:
    # json_lines already parsed every line of both stderr logs.
    assert json_run.worker_lines and json_run.api_lines

    for secret in ("p%40ss", "p@ss", "w0rd", "p%3Aw0rd", "viewer"):
        assert secret not in json_run.everything
        assert secret not in json.dumps(json_run.tasks)


def test_every_worker_line_about_a_task_names_it(json_run: JsonRun) -> None:
    celery_ids = celery_ids_of(json_run.worker_lines)
    about_tasks = [
        line
        for line in json_run.worker_lines
        if TASK_LOGGERS.match(line["logger"])
        or any(i in line["message"] for i in [*json_run.ids, *celery_ids])
    ]

    assert len(celery_ids) == 6  # a probe and an aggregation per task
    for line in about_tasks:
        assert line["task_id"] in json_run.ids, line
        assert line["task_type"] == "probe", line
    # ffmpeg's stderr reached the debug log, under its task.
    ffmpeg_tasks = {line["task_id"] for line in about_tasks if is_ffmpeg(line)}
    assert ffmpeg_tasks == set(json_run.ids)


def test_a_failed_results_message_quotes_ffmpegs_last_line(json_run: JsonRun) -> None:
    for task in json_run.tasks:
        if task["status"] != "failed":
            continue
        ffmpeg_said = [
            without_tags(line["message"].removeprefix("ffmpeg: "))
            for line in json_run.worker_lines
            if is_ffmpeg(line) and line["task_id"] == task["id"]
        ]
        assert ffmpeg_said, f"no ffmpeg stderr in the debug log of {task['id']}"
        assert ffmpeg_said[-1] in task["result"]["error"]["message"]


def without_tags(line: str) -> str:
    """An ffmpeg line without its "[error]" / "[tcp @ 0x..]" prefixes."""
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", line)


def is_ffmpeg(line: dict[str, Any]) -> bool:
    return line["logger"] == "camtester.probes.ffmpeg" and line["message"].startswith(
        "ffmpeg: "
    )


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a log file, each of which must be one JSON object."""
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        entry = json.loads(text)  # fails the test for a line that is not JSON
        assert isinstance(entry, dict), f"line {number}: {text}"
        assert {"time", "level", "logger", "task_id", "task_type", "message"} <= set(
            entry
        )
        lines.append(entry)
    return lines


def celery_ids_of(lines: list[dict[str, Any]]) -> set[str]:
    return {line["celery_id"] for line in lines if line["celery_id"] != "-"}
