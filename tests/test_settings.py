"""Settings: every field documented in the README, environment and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from scoring.errors import ConfigError
from scoring.settings import Settings, load_settings, settings_markdown

README = Path(__file__).parent.parent / "README.md"


def test_every_setting_is_documented_in_the_readme():
    text = README.read_text()
    missing = [name for name in Settings.model_fields if f"`SCORING_{name.upper()}`" not in text]
    assert missing == []
    for line in settings_markdown().splitlines()[2:]:
        assert line in text, f"README settings table is stale: {line}"


def test_mlflow_tracking_uri_is_honoured(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert load_settings().resolved_tracking_uri() == "http://127.0.0.1:5999"


def test_invalid_setting_names_the_field(monkeypatch):
    monkeypatch.setenv("SCORING_NULL", "zero")
    with pytest.raises(ConfigError, match=r"setting 'null': .*'zero'"):
        load_settings()


def test_only_prefixed_variables_choose_the_registry(monkeypatch):
    """An unrelated TRACKING_URI / REGISTRY_URI in the environment must not redirect a job."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "SCORING_TRACKING_URI", "SCORING_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRACKING_URI", "http://127.0.0.1:5998")
    monkeypatch.setenv("REGISTRY_URI", "http://127.0.0.1:5997")
    settings = load_settings()
    assert settings.tracking_uri is None and settings.registry_uri is None
    assert load_settings(tracking_uri="http://127.0.0.1:5996").tracking_uri == "http://127.0.0.1:5996"


def test_an_unknown_codec_is_refused_before_any_work(monkeypatch):
    monkeypatch.setenv("SCORING_COMPRESSION", "zstdd")
    with pytest.raises(ConfigError, match=r"setting 'compression': Input should be 'zstd', .*\(got 'zstdd'\)"):
        load_settings()


def test_codec_names_are_read_in_any_case(monkeypatch):
    monkeypatch.setenv("SCORING_COMPRESSION", "ZSTD")
    assert load_settings().compression == "zstd"
