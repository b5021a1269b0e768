"""Threshold defaults, layering and validation."""

from __future__ import annotations

import math

import pytest

from camtester.analysis.thresholds import (
    DEFAULT_THRESHOLDS,
    THRESHOLDS,
    merge_thresholds,
    threshold_table,
)
from camtester.errors import InvalidInput


def test_defaults_are_what_the_table_documents() -> None:
    assert DEFAULT_THRESHOLDS["packet_loss_warning"] == 0.02
    assert DEFAULT_THRESHOLDS["packet_loss_critical"] == 0.2
    assert DEFAULT_THRESHOLDS["black_min_s"] == 2.0
    assert DEFAULT_THRESHOLDS["stall_tolerance_s"] == 1.0
    assert len(DEFAULT_THRESHOLDS) == len(THRESHOLDS) == 23


def test_every_threshold_has_a_unit_and_a_meaning() -> None:
    for threshold in THRESHOLDS:
        assert threshold.unit and threshold.meaning.endswith(".")
        assert threshold.default >= 0
        assert threshold.maximum is None or threshold.default <= threshold.maximum


def test_no_layers_give_the_defaults_as_a_copy() -> None:
    merged = merge_thresholds()
    merged["black_min_s"] = 99.0

    assert merge_thresholds(None, None) == DEFAULT_THRESHOLDS
    assert DEFAULT_THRESHOLDS["black_min_s"] == 2.0


def test_task_layer_overrides_deployment_layer() -> None:
    deployment = {"black_min_s": 1, "latency_warning_ms": 50.0}
    task = {"black_min_s": 4.5}

    merged = merge_thresholds(deployment, task)

    assert merged["black_min_s"] == 4.5
    assert merged["latency_warning_ms"] == 50.0
    assert isinstance(merged["black_min_s"], float)
    assert merged["freeze_min_s"] == DEFAULT_THRESHOLDS["freeze_min_s"]


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"black_minimum": 1}, "thresholds.black_minimum is not a known threshold"),
        ({"black_min_s": "2"}, "thresholds.black_min_s must be a number >= 0"),
        ({"black_min_s": -0.1}, "thresholds.black_min_s must be a number >= 0"),
        ({"black_min_s": True}, "thresholds.black_min_s must be a number >= 0"),
        ({"black_min_s": None}, "thresholds.black_min_s must be a number >= 0"),
        ({"black_min_s": math.nan}, "thresholds.black_min_s must be a number >= 0"),
        ({"black_min_s": math.inf}, "thresholds.black_min_s must be a number >= 0"),
        ({"black_min_s": [1]}, "thresholds.black_min_s must be a number >= 0"),
        (
            {"packet_loss_warning": 1.5},
            "thresholds.packet_loss_warning must be a number from 0 to 1",
        ),
        ({3: 1.0}, "thresholds.3 is not a known threshold"),
    ],
)
def test_bad_values_name_the_key(layer: dict, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        merge_thresholds({"black_min_s": 1.0}, layer)

    assert str(caught.value) == message


def test_a_layer_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidInput, match="^thresholds must be an object"):
        merge_thresholds([("black_min_s", 1.0)])  # type: ignore[arg-type]


def test_zero_and_the_maximum_are_allowed() -> None:
    merged = merge_thresholds({"decode_errors_warning": 0, "low_fps_ratio": 1})

    assert merged["decode_errors_warning"] == 0.0
    assert merged["low_fps_ratio"] == 1.0


def test_table_has_a_row_per_threshold() -> None:
    table = threshold_table().splitlines()

    assert len(table) == 2 + len(THRESHOLDS)
    assert table[2].startswith("| `packet_loss_warning` | 0.02 | fraction 0..1 |")
