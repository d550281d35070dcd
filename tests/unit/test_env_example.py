"""Every runtime setting is documented in .env.example, and what it documents parses."""

import re

import pytest
from pydantic_settings import BaseSettings

from contract.paths import ROOT
from contract.settings import Settings
from services.api.settings import ServeSettings
from services.drift.settings import DriftSettings

DOCUMENTED = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))


@pytest.mark.parametrize(
    ("settings", "prefix"), [(ServeSettings, "SERVE_"), (DriftSettings, "DRIFT_"), (Settings, "")]
)
def test_every_setting_is_documented(settings: type[BaseSettings], prefix: str) -> None:
    wanted = {prefix + name.upper() for name in settings.model_fields}
    assert wanted - DOCUMENTED == set()


def test_the_documented_values_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    for line in (ROOT / ".env.example").read_text().splitlines():
        if match := re.fullmatch(r"((?:SERVE|DRIFT)_[A-Z0-9_]+)=(.*)", line):
            monkeypatch.setenv(*match.groups())
    ServeSettings()
    DriftSettings()
