"""Loading the configuration: base.yaml, the environment file, --set overrides and ${VAR} interpolation, validated."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from microseg.runtime.config import Config
from microseg.runtime.errors import ConfigError

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist; pass an existing file with --conf") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, not {type(data).__name__}")
    return data


def _merge(base: dict, overlay: dict, origin: str, origins: dict[str, str], prefix: str = "") -> dict:
    """Deep-merge overlay into a copy of base, recording which file set each leaf key."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and value:
            merged[key] = _merge(merged[key], value, origin, origins, f"{dotted}.")
        else:
            merged[key] = copy.deepcopy(value)
            _record_origin(value, dotted, origin, origins)
    return merged


def _record_origin(value: Any, dotted: str, origin: str, origins: dict[str, str]) -> None:
    origins[dotted] = origin
    if isinstance(value, dict):
        for key, sub in value.items():
            _record_origin(sub, f"{dotted}.{key}", origin, origins)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key.sub=value``; the value is read as a YAML scalar (so 3 is an int, true a bool)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} must look like key.sub=value, for example lake.root=/data/lake")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


# Maps whose keys themselves hold dots (Spark settings): the rest of an override's key is one key.
_DOTTED_KEY_MAPS = ("spark.settings.",)


def _nest(key: str, value: Any) -> dict[str, Any]:
    nested: dict[str, Any] = value
    parts = key.split(".")
    for prefix in _DOTTED_KEY_MAPS:
        if key.startswith(prefix) and len(key) > len(prefix):
            parts = [*prefix.rstrip(".").split("."), key[len(prefix) :]]
    for part in reversed(parts):
        nested = {part: nested}
    return nested


def interpolate(value: Any, where: str, missing: list[tuple[str, str]] | None = None) -> Any:
    """``value`` with every ``${VAR}`` and ``${VAR:-default}`` replaced from the environment.

    An unset variable without a default is added to ``missing`` as (config key, variable); without a
    ``missing`` list it raises at once.

    Raises:
        ConfigError: an unset variable without a default, when no ``missing`` list is given.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, f"{where}.{k}" if where else k, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, where, missing) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        if missing is None:
            raise ConfigError(_unset([(where, name)], {}))
        missing.append((where, name))
        return ""

    return _ENV_PATTERN.sub(substitute, value)


def _unset(missing: list[tuple[str, str]], origins: dict[str, str]) -> str:
    lines = [f"{len(missing)} environment variable(s) the configuration needs are not set:"]
    for key, name in missing:
        lines.append(f"  ${{{name}}} for {key} ({origin_of(key, origins)}): export {name}=...")
    lines.append("Set them (the file asks for them, with no default), or give the keys with --set key=value.")
    return "\n".join(lines)


def load_config(
    conf_file: str | Path = "conf/local.yaml", overrides: list[str] | None = None, origins: dict[str, str] | None = None
) -> Config:
    """Load and validate the configuration.

    Args:
        conf_file: the environment file; ``base.yaml`` beside it supplies every default.
        overrides: ``key.sub=value`` strings, applied last.
        origins: if given, filled with where each key was set (dotted key -> file or ``--set ...``).

    Returns:
        The validated, immutable Config.

    Raises:
        ConfigError: naming the file, key and expected type of the first problem found.
    """
    env_path = Path(conf_file).resolve()
    base_path = env_path.parent / "base.yaml"
    origins = {} if origins is None else origins
    merged = _merge({}, _read_yaml(base_path), str(base_path), origins)
    if env_path != base_path:
        merged = _merge(merged, _read_yaml(env_path), str(env_path), origins)
    for text in overrides or []:
        key, value = parse_override(text)
        merged = _merge(merged, _nest(key, value), f"--set {text}", origins)
    missing: list[tuple[str, str]] = []
    merged = interpolate(merged, "", missing)
    if missing:
        raise ConfigError(_unset(missing, origins))
    merged["conf_dir"] = str(env_path.parent)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins, env_path)) from None


def _describe(exc: ValidationError, origins: dict[str, str], env_path: Path) -> str:
    lines = [f"invalid configuration ({exc.error_count()} problem(s)) loading {env_path}:"]
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"])
        origin = origin_of(key, origins)
        if error["type"] == "extra_forbidden":
            lines.append(f"  {origin}: unknown key '{key}'; check its spelling against conf/base.yaml")
        elif error["type"] == "missing":
            lines.append(f"  {origin}: required key '{key}' is missing")
        else:
            got = error.get("input")
            lines.append(f"  {origin}: key '{key}' {error['msg'].lower()} (got {got!r})")
    return "\n".join(lines)


def origin_of(key: str, origins: dict[str, str]) -> str:
    """The file (or ``--set``) that set ``key`` or the nearest key above it; ``config`` if none is known."""
    parts = key.split(".")
    while parts:
        found = origins.get(".".join(parts))
        if found:
            return found
        parts.pop()
    return "config"
