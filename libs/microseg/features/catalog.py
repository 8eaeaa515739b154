"""The feature catalog (conf/features/catalog.yaml): each feature's meaning, layer, transform and words.

Entries whose name holds ``{category}`` or ``{channel}`` expand to one feature per configured
category or channel. The features stage computes exactly the catalog's features (a test holds the
two together); models read the transforms, and profiles the high and low words for labels.
"""

from __future__ import annotations

from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from microseg.runtime.config import Config
from microseg.runtime.errors import ConfigError

LAYERS = ("value", "engagement", "preference", "service")


class Feature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str
    layer: Literal["value", "engagement", "preference", "service"]
    transform: Literal["none", "log1p", "clip_p99"]
    unit: str
    high: str
    low: str
    null_when: str | None = Field(None, description="why a customer can have no value; None: never null")
    requires: str | None = Field(
        None, pattern=r"^[a-z_]+(\.[a-z_]+)?$", description="<silver table> or <silver table>.<column> it is built from"
    )
    zero_fill: bool = Field(False, description="a count: 0 for a customer without events, when its source exists")
    activity_of: list[str] = Field(default_factory=list, description="tables whose latest event counts as activity")

    @property
    def source(self) -> str | None:
        """The silver table the feature requires (None: customers and orders, always present)."""
        return self.requires.split(".", 1)[0] if self.requires else None

    @property
    def column(self) -> str | None:
        """The column of ``source`` that must have values somewhere, if one is named."""
        return self.requires.split(".", 1)[1] if self.requires and "." in self.requires else None


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    top_categories: list[str]
    channels: list[str]
    features: list[Feature]
    # feature -> [words above the macro segment's mean, words below it], for labels within a macro segment
    comparatives: dict[str, tuple[str, str]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: dict) -> dict:
        expanded = []
        for entry in data.get("features", []):
            name = str(entry.get("name", ""))
            for placeholder, values in (
                ("category", data.get("top_categories", [])),
                ("channel", data.get("channels", [])),
            ):
                if f"{{{placeholder}}}" in name:
                    expanded += [
                        {
                            k: v.replace(f"{{{placeholder}}}", value) if isinstance(v, str) else v
                            for k, v in entry.items()
                        }
                        for value in values
                    ]
                    break
            else:
                expanded.append(entry)
        comparatives = {}
        for name, words in (data.get("comparatives") or {}).items():
            for placeholder, values in (
                ("category", data.get("top_categories", [])),
                ("channel", data.get("channels", [])),
            ):
                if f"{{{placeholder}}}" in name:
                    for value in values:
                        key = name.replace(f"{{{placeholder}}}", value)
                        comparatives[key] = [str(w).replace(f"{{{placeholder}}}", value) for w in words]
                    break
            else:
                comparatives[name] = words
        return {**data, "features": expanded, "comparatives": comparatives}

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        names = [f.name for f in self.features]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"feature name(s) {repeated} appear more than once")
        unknown = sorted(set(self.comparatives) - set(names))
        if unknown:
            raise ValueError(f"comparatives name feature(s) {unknown} that are not in the catalog")
        return self

    def comparative(self, name: str, above: bool) -> str:
        """Words for a segment above (or below) its macro segment's mean of a feature: "spends more"."""
        words = self.comparatives.get(name)
        if words is None:
            return f"{'higher' if above else 'lower'} {name}"
        return words[0] if above else words[1]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise ConfigError(f"feature {name!r} is not in the feature catalog; known features: {self.names}")

    def layer(self, layer: str) -> list[Feature]:
        return [f for f in self.features if f.layer == layer]


def load_catalog(cfg: Config) -> Catalog:
    """Read and validate the catalog named by ``features.catalog`` (relative to the conf folder).

    Raises:
        ConfigError: naming the file and the entry at fault.
    """
    path = cfg.conf_file(cfg.features.catalog)
    try:
        return Catalog.model_validate(yaml.safe_load(path.read_text()) or {})
    except FileNotFoundError:
        raise ConfigError(f"feature catalog {path} does not exist; set features.catalog to a file in conf/") from None
    except (ValidationError, yaml.YAMLError) as exc:
        raise ConfigError(f"feature catalog {path} is invalid: {exc}") from None


def markdown(catalog: Catalog) -> str:
    """The catalog as a Markdown page (docs/FEATURES.md is generated from it by ``microseg catalog``)."""
    lines = [
        "# Feature catalog",
        "",
        f"Generated from conf/features/catalog.yaml (version {catalog.version}) by `microseg catalog`; do not edit.",
        "Windows end on as_of inclusive; amounts are in the base currency.",
        "",
    ]
    for layer in LAYERS:
        lines += [
            f"## {layer}",
            "",
            "| feature | description | unit | transform | high | low | null when |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| `{f.name}` | {f.description} | {f.unit} | {f.transform} | {f.high} | {f.low} | {f.null_when or '—'} |"
            for f in catalog.layer(layer)
        ]
        lines.append("")
    return "\n".join(lines)
