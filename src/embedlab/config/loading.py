"""Reading a config: YAML files, `--set KEY=VALUE` overrides and validation, with errors that name the key."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from embedlab.config.schema import ExperimentConfig


class ConfigError(ValueError):
    """A config that cannot be used, with the key and the fix in its message."""


def _section_fields(model: type[BaseModel]) -> dict[str, Any]:
    return dict(model.model_fields)


def _valid_keys_near(path: Sequence[str | int]) -> list[str]:
    """The valid keys of the section that `path` points into."""
    model: type[BaseModel] = ExperimentConfig
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return sorted(model.model_fields)


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for item in error.errors():
        location = [part for part in item["loc"] if not (isinstance(part, str) and part[:1].isupper())]
        key = ".".join(str(part) for part in location)
        if item["type"] == "extra_forbidden":
            valid = _valid_keys_near(location)
            hint = difflib.get_close_matches(str(location[-1]), valid, n=1)
            suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
            lines.append(f"  unknown key {key!r}.{suggestion} Valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def parse_config(raw: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None


def packaged_configs() -> dict[str, Path]:
    """The configs shipped inside the package (src/embedlab/configs), by file name."""
    folder = resources.files("embedlab") / "configs"
    return {entry.name: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def resolve_config_path(path: str | Path) -> Path:
    """`path` when it is a file; else a packaged config named alone (`image_folder.yaml`, `image_folder`)
    or as the repository names it (`configs/image_folder.yaml`), so that these work from any folder."""
    path = Path(path)
    if path.is_file():
        return path
    packaged = packaged_configs()
    if not path.is_absolute() and path.parent in (Path("."), Path("configs")):
        for name in (path.name, f"{path.name}.yaml"):
            if name in packaged:
                return packaged[name]
    raise ConfigError(
        f"config file {path} does not exist. A packaged config can be named alone from any folder "
        f"({', '.join(sorted(packaged))}), and `embedlab init` writes a starter config into this one"
    )


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's mapping; a packaged config may be named alone (`resolve_config_path`)."""
    path = resolve_config_path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """`KEY=VALUE` with VALUE read as YAML (numbers, booleans, lists and mappings work)."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected KEY=VALUE, got {assignment!r}")
    return key.strip(), yaml.safe_load(value) if value.strip() else None


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested mapping; a key that does not exist in the schema is an error."""
    parts = key.split(".")
    check_dotted_key(parts)
    node: dict[str, Any] = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def check_dotted_key(parts: list[str]) -> None:
    model: type[BaseModel] | None = ExperimentConfig
    for depth, part in enumerate(parts):
        if model is None:
            return
        if model.model_config.get("extra") == "allow":
            return
        fields = _section_fields(model)
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            hint = difflib.get_close_matches(part, list(fields), n=1)
            suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"unknown key {'.'.join(parts)!r}.{suggestion} "
                f"Valid keys in {where}: {', '.join(sorted(fields))}"
            )
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        model = nested[0] if nested else None


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> tuple[ExperimentConfig, dict[str, Any]]:
    """Read a YAML config (or start from `base`), apply `--set` overrides, validate.

    Returns the validated config and the raw mapping it came from (the grid expands the raw mapping).
    """
    raw = copy.deepcopy(dict(base or {})) if path is None else read_yaml(path)
    for assignment in overrides:
        key, value = parse_assignment(assignment)
        set_dotted(raw, key, value)
    return parse_config(raw, str(path or "config")), raw
