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


class _DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one mapping (``yaml.safe_load`` would keep the last one silently)."""

    def __init__(self, key: Any, first_line: int, line: int) -> None:
        super().__init__(f"key {key!r} appears twice in the same mapping (lines {first_line} and {line})")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, except that a duplicate key is an error, as YAML 1.2 says.

    A spec with ``depth: 2`` and, further down, ``depth: 3`` means one of them is a mistake;
    silently training with the last one hides it.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base`` may override keys: allowed
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first != key_node.start_mark.line + 1:
                raise _DuplicateKeyError(key, first, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


def load_spec(path: Path) -> TrainingSpec:
    """Read and validate a YAML training spec (strict YAML: a duplicate key is an error).

    Raises
    ------
    ConfigError
        One line: the path is missing or a folder, the YAML is invalid (a duplicate key is
        named with its lines), or the spec fails validation.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"spec file {path} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"spec file {path} does not exist")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # a SafeLoader subclass
    except _DuplicateKeyError as exc:
        raise ConfigError(f"invalid spec {path}: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"spec file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise ConfigError(f"spec file {path} cannot be read: {exc.strerror or exc}") from None
    return parse_spec(data, str(path))


def spec_to_yaml(spec: TrainingSpec) -> str:
    """YAML text of a spec, every field written out (a resolved, self-describing recipe)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def save_spec(spec: TrainingSpec, path: Path) -> None:
    """Write a spec atomically."""
    atomic_write_text(Path(path), spec_to_yaml(spec))
