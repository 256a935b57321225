"""Names of clones made without a name (orchestrator/domain/clone_naming.py, spec §22)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator.domain.clone_naming import STRATEGIES, clone_name

NOW = datetime(2014, 6, 5, 9, 45, 56, tzinfo=UTC)


def test_the_four_strategies_of_the_profile():
    assert STRATEGIES == ("NONE", "COUNTER", "DATE", "TIMESTAMP")


@pytest.mark.parametrize(("strategy", "clone"), [
    ("NONE", "test_drive_x"),
    ("COUNTER", "test_drive_x_1"),
    ("DATE", "test_drive_x-2014-06-05"),
    ("TIMESTAMP", "test_drive_x-2014-06-05 09:45:56"),
])
def test_the_examples_of_spec_22(strategy, clone):
    assert clone_name("test_drive_x", strategy, NOW) == clone


def test_none_keeps_the_name():
    assert clone_name("web_3-2014-06-05", "NONE", NOW) == "web_3-2014-06-05"


@pytest.mark.parametrize(("name", "clone"), [
    ("web", "web_1"),
    ("web_1", "web_2"),
    ("web_9", "web_10"),
    ("web_99", "web_100"),
    ("web_007", "web_8"),  # the number counts, not its digits
    ("web_1_2", "web_1_3"),
    ("_4", "_5"),
    ("web_", "web__1"),
    ("web_x", "web_x_1"),
    ("web-1", "web-1_1"),
    ("", "_1"),
])
def test_counter(name, clone):
    assert clone_name(name, "COUNTER", NOW) == clone


@pytest.mark.parametrize(("name", "clone"), [
    ("web", "web-2014-06-05"),
    ("web-2014-06-04", "web-2014-06-05"),      # a trailing date is replaced
    ("web-2013-01-01_1", "web-2013-01-01_1-2014-06-05"),  # not trailing: kept
    ("web-2014-06-05", "web-2014-06-05_1"),    # already today's: a counter instead, the date kept
    ("web-2014-06-05_1", "web-2014-06-05_1-2014-06-05"),
    ("web-2014-06-04 10:00:00", "web-2014-06-04 10:00:00-2014-06-05"),  # a timestamp is not a date
])
def test_date(name, clone):
    assert clone_name(name, "DATE", NOW) == clone


@pytest.mark.parametrize(("name", "clone"), [
    ("web", "web-2014-06-05 09:45:56"),
    ("web-2014-06-05 09:45:55", "web-2014-06-05 09:45:56"),
    ("web-2014-06-05 09:45:56", "web-2014-06-05 09:45:56_1"),   # this very second: a counter instead
    ("web-2014-06-05 09:45:56_1", "web-2014-06-05 09:45:56_1-2014-06-05 09:45:56"),
    ("web-2014-06-05", "web-2014-06-05-2014-06-05 09:45:56"),   # a date is not a timestamp
])
def test_timestamp(name, clone):
    assert clone_name(name, "TIMESTAMP", NOW) == clone


def test_a_chain_of_same_day_clones():
    names = ["db"]
    for _ in range(3):
        names.append(clone_name(names[-1], "DATE", NOW))
    assert names == ["db", "db-2014-06-05", "db-2014-06-05_1", "db-2014-06-05_1-2014-06-05"]
