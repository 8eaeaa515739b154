"""Write bundle_schema.json: the Databricks CLI's bundle JSON schema cut down to what databricks.yml uses.

    python deploy/databricks/trim_schema.py FULL_SCHEMA CLI_VERSION

FULL_SCHEMA is bundle/schema/jsonschema.json of github.com/databricks/cli at the tag CLI_VERSION (the same schema
``databricks bundle schema`` prints). Every object type databricks.yml reaches keeps all its property names, so an
unknown or misspelled key is still an error; the properties the file does not use keep their name only (any value),
and the types only they reach are left out. Run it again after databricks.yml uses a new key.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
PREFIX = "#/$defs/"


def trim(full: dict[str, Any], bundle: Any) -> dict[str, Any]:
    defs: dict[str, Any] = {}  # kept definitions by ref path ("a/b/c")
    used: dict[int, set[str]] = {}  # id(object branch) -> property names the file uses

    def resolve(ref: str) -> Any:
        node: Any = full["$defs"]
        for part in ref.removeprefix(PREFIX).split("/"):
            node = node[part]
        return node

    def walk(schema: dict[str, Any], value: Any) -> None:
        if "$ref" in schema:
            ref = schema["$ref"].removeprefix(PREFIX)
            defs.setdefault(ref, resolve(schema["$ref"]))
            walk(defs[ref], value)
        for branch in schema.get("oneOf", []) + schema.get("anyOf", []):
            walk(branch, value)
        kind = schema.get("type")
        if kind == "object" and isinstance(value, dict):
            props = schema.get("properties", {})
            for key, item in value.items():
                if key in props:
                    used.setdefault(id(schema), set()).add(key)
                    walk(props[key], item)
                elif isinstance(schema.get("additionalProperties"), dict):
                    walk(schema["additionalProperties"], item)
        elif kind == "array" and isinstance(value, list):
            for item in value:
                walk(schema.get("items", {}), item)

    def prune(schema: Any) -> Any:
        if isinstance(schema, list):
            return [prune(item) for item in schema]
        if not isinstance(schema, dict):
            return schema
        out = {k: prune(v) for k, v in schema.items() if k not in ("markdownDescription", "properties")}
        if "properties" in schema:
            keep = used.get(id(schema), set())
            out["properties"] = {k: prune(v) if k in keep else {} for k, v in schema["properties"].items()}
        return out

    walk(full, bundle)
    nested: dict[str, Any] = {}
    for ref in sorted(defs):
        *parents, leaf = ref.split("/")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = prune(defs[ref])
    root = prune(full)
    root["$defs"] = nested
    return root


def main(full_schema: str, cli_version: str) -> None:
    full = json.loads(Path(full_schema).read_text())
    bundle = yaml.safe_load((HERE / "databricks.yml").read_text())
    schema = {
        "$comment": (
            f"Trimmed from bundle/schema/jsonschema.json of github.com/databricks/cli {cli_version} by "
            "deploy/databricks/trim_schema.py: only what databricks.yml uses is checked in depth."
        ),
        **trim(full, bundle),
    }
    (HERE / "bundle_schema.json").write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
