"""The allocator setting that the commands apply at start-up (flowlet.runtime)."""

from __future__ import annotations

import platform

import pytest

from flowlet import runtime
from pipelines.arguments import setup_cli

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(runtime, "_state", {})
    for name in (*runtime._USER_SETTINGS, "FLOWLET_TUNE_MALLOC"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_tunes_glibc_once_and_reports_it(fresh_state):
    assert runtime.allocator_tuned() == "default"
    assert runtime.tune_cpu_allocator() is True
    assert runtime.allocator_tuned() == "tuned"
    assert runtime.tune_cpu_allocator() is True  # idempotent


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_opt_out_leaves_the_allocator_alone(fresh_state, value):
    fresh_state.setenv("FLOWLET_TUNE_MALLOC", value)
    assert runtime.tune_cpu_allocator() is False
    assert "FLOWLET_TUNE_MALLOC" in runtime.allocator_tuned()


def test_user_malloc_settings_win(fresh_state):
    fresh_state.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert runtime.tune_cpu_allocator() is False
    assert "MALLOC_TRIM_THRESHOLD_" in runtime.allocator_tuned()


def test_other_c_libraries_are_skipped(fresh_state):
    fresh_state.setattr(runtime.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert runtime.tune_cpu_allocator() is False
    assert "not glibc" in runtime.allocator_tuned()


def test_every_command_setup_applies_it(fresh_state):
    calls = []
    fresh_state.setattr(runtime, "tune_cpu_allocator", lambda: calls.append(1) or True)
    setup_cli()
    assert calls == [1]
