"""`camtester` on the command line: one measurement here, no broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from tests.fixtures.services import JWT_SECRET, REPO

CAMTESTER = str(Path(sys.executable).parent / "camtester")


def run(
    *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", **env}
    return subprocess.run(
        [CAMTESTER, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=environment,
        check=False,
    )


def test_ping_prints_the_result_json() -> None:
    completed = run("ping", "127.0.0.1", "--count", "5", "--interval", "0.05")

    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["ok"] is True
    assert result["payload"]["packets_received"] == 5
    assert result["deviations"] == []


def test_probe_of_a_local_file_reports_its_black_interval(
    fault_clips: dict[str, Path],
) -> None:
    completed = run("probe", str(fault_clips["black"]), "--duration", "8")

    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    (interval,) = result["payload"]["black_intervals"]
    assert abs(interval[0] - 3.0) <= 0.2 and abs(interval[1] - 6.0) <= 0.2
    assert [d["kind"] for d in result["deviations"]] == ["black"]


def test_check_of_a_refused_stream_exits_1_with_the_error_code() -> None:
    completed = run("check", "rtsp://127.0.0.1:9/none", "--duration", "2")

    assert completed.returncode == 1
    result = json.loads(completed.stdout)
    assert result["ok"] is False
    assert result["error"]["code"] == "refused"


def test_bad_option_is_a_usage_error_naming_it() -> None:
    completed = run("ping", "127.0.0.1", "--count", "0")

    assert completed.returncode == 2
    assert "count" in completed.stderr


def test_a_source_that_is_no_uri_and_no_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.mp4"

    completed = run("probe", str(missing), "--duration", "2")

    assert completed.returncode == 2
    assert f"SOURCE '{missing}' is no stream URI and no file here" in completed.stderr


def test_a_bad_option_is_named_as_the_command_spells_it() -> None:
    completed = run("ping", "127.0.0.1", "--count", "0")

    assert completed.returncode == 2
    assert "Error: --count must be between 1 and 10000" in completed.stderr


def test_an_expected_profile_that_is_not_json_is_a_usage_error() -> None:
    completed = run("probe", "rtsp://127.0.0.1:1/x", "--expected", "{bad")

    assert completed.returncode == 2
    assert "--expected must be a JSON object" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_token_is_signed_with_the_configured_secret() -> None:
    completed = run("token", CAMTESTER_JWT_SECRET=JWT_SECRET)

    assert completed.returncode == 0, completed.stderr
    claims = jwt.decode(completed.stdout.strip(), JWT_SECRET, algorithms=["HS256"])
    assert claims["exp"] > claims["iat"]


@pytest.mark.parametrize("ttl", ["0", "-5"])
def test_a_token_that_could_never_be_used_is_refused(ttl: str) -> None:
    completed = run("token", "--ttl", ttl, CAMTESTER_JWT_SECRET=JWT_SECRET)

    assert completed.returncode == 2
    assert "--ttl" in completed.stderr
    assert completed.stdout == ""


def test_token_without_a_secret_says_so() -> None:
    completed = run("token")

    assert completed.returncode == 1
    assert "CAMTESTER_JWT_SECRET" in completed.stderr
    assert "var/jwt-secret" in completed.stderr


def test_zscore_calibrate_flags_the_one_spike() -> None:
    series = " ".join(["1", "1.1", "0.9", "1.05", "0.95"] * 6 + ["50"] + ["1"] * 5)

    completed = run("zscore-calibrate", "--lag", "10", "--threshold", "5", stdin=series)

    assert completed.returncode == 0, completed.stderr
    assert "1 peaks" in completed.stdout
    assert "peak 1" in completed.stdout.splitlines()[32]
