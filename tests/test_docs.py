"""The README's configuration table documents every setting, with its real default."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from notifier.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def settings_keys(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every leaf setting as ``section.key`` -> its default value."""
    keys: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.update(settings_keys(annotation, key + "."))
        else:
            keys[key] = field.get_default(call_default_factory=True)
    return keys


def readme_table() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([a-z_.]+)` \| `?([^|`]*)`? \|", section, re.MULTILINE))


def shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, SecretStr):
        return "null"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return json.dumps(value) if not isinstance(value, str | int) else str(value)


def test_every_setting_is_documented_with_its_default() -> None:
    documented = readme_table()
    keys = settings_keys(Settings)
    missing = sorted(set(keys) - set(documented))
    assert not missing, f"settings missing from README's configuration table: {missing}"
    unknown = sorted(set(documented) - set(keys))
    assert not unknown, f"README documents settings that do not exist: {unknown}"
    for key, default in keys.items():
        assert documented[key] == shown(default), f"{key}: README says {documented[key]!r}"
