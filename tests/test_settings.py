"""Settings read from CAMTESTER_* variables, and the figures derived from them."""

from __future__ import annotations

import math

import pytest

from camtester.settings import Settings, SettingsError
from camtester.store.claims import hard_time_limit_s, visibility_timeout_s


def test_the_visibility_timeout_defaults_to_twice_the_longest_task() -> None:
    settings = Settings.from_env({})

    # 300 s samples and a 5 s connect timeout: 300 + 4 x 5 + 15 + 10 = 345 s.
    assert hard_time_limit_s(settings) == 345
    assert visibility_timeout_s(settings) == 690


def test_a_visibility_timeout_longer_than_the_longest_task_is_kept() -> None:
    settings = Settings.from_env({"CAMTESTER_VISIBILITY_TIMEOUT_S": "346"})

    assert visibility_timeout_s(settings) == 346


@pytest.mark.parametrize("seconds", ["345", "10", "-1"])
def test_a_visibility_timeout_a_task_can_outlast_is_refused(seconds: str) -> None:
    settings = Settings.from_env({"CAMTESTER_VISIBILITY_TIMEOUT_S": seconds})

    with pytest.raises(SettingsError, match="longer than the longest task, 345 s"):
        visibility_timeout_s(settings)


def test_a_visibility_timeout_that_is_not_a_number_names_its_variable() -> None:
    with pytest.raises(SettingsError, match="CAMTESTER_VISIBILITY_TIMEOUT_S"):
        Settings.from_env({"CAMTESTER_VISIBILITY_TIMEOUT_S": "soon"})


def test_the_longest_task_follows_the_sample_and_connect_limits() -> None:
    settings = Settings.from_env(
        {"CAMTESTER_MAX_SAMPLE_DURATION_S": "4", "CAMTESTER_CONNECT_TIMEOUT_S": "2"}
    )

    assert math.ceil(hard_time_limit_s(settings)) == 4 + 4 * 2 + 15 + 10
    assert visibility_timeout_s(settings) == 2 * 37
