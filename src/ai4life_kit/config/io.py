"""Load and save training specs as YAML, turning pydantic errors into one readable line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ai4life_kit.config.spec import TrainingSpec
from ai4life_kit.errors import ConfigError
from ai4life_kit.fileio import atomic_write_text

__all__ = ["load_spec", "parse_spec", "save_spec", "spec_to_yaml", "format_validation_error"]


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming each bad field (dotted path), its value and what is wrong."""
    parts = []
    for err in exc.errors():
        loc = ".".join(
            str(p) for p in err["loc"] if not (isinstance(p, str) and p in ("n2v", "n2v2", "structn2v", "care", "n2n"))
        )
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        elif err["type"] == "missing":
            parts.append(f"missing key {loc!r}")
        elif "input" in err and err["type"] != "value_error" and not isinstance(err["input"], dict):
            parts.append(f"{loc} = {err['input']!r}: {msg}")
        else:
            parts.append(f"{loc}: {msg}" if loc else msg)
    return f"invalid spec {source}: " + "; ".join(parts)


def parse_spec(data: Any, source: str = "<spec>") -> TrainingSpec:
    """Validate a mapping as a :class:`TrainingSpec`."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid spec {source}: expected a YAML mapping, got {type(data).__name__}")
    try:
        return TrainingSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_spec(path: Path) -> TrainingSpec:
    """Read and validate a YAML training spec."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"spec file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"spec file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_spec(data, str(path))


def spec_to_yaml(spec: TrainingSpec) -> str:
    """YAML text of a spec, every field written out (a resolved, self-describing recipe)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def save_spec(spec: TrainingSpec, path: Path) -> None:
    """Write a spec atomically."""
    atomic_write_text(Path(path), spec_to_yaml(spec))
