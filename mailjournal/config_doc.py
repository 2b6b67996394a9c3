"""Generates docs/configuration.md from the config model, so the reference never drifts from the
code (a test compares the two): ``python -m mailjournal.config_doc > docs/configuration.md``."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from mailjournal.config import Config

HEADER = """# Configuration reference

Generated from `mailjournal/config.py` by `python -m mailjournal.config_doc`; do not edit by hand.

One TOML file (example: `config/mailjournal.example.toml`), validated at start: unknown keys,
malformed addresses, networks, host names and topic names, numbers out of range (ports, timeouts,
retry delays; no NaN or infinity), two roles sharing a topic or a consumer group, and journaling in a
direction without its `ndr_address` are refused with a message naming the key
(`mailjournal config check FILE`, exit 0 when valid, 2 when not). Each command also refuses to start,
with exit 2, when a file its stage reads (listener certificate and key, credentials, stamp secret,
CA and password files) is missing or unreadable, and -- with journaling on -- the journal worker,
delivery and the audit refuse to start without a loop-guard key (`journal.stamp_secret_file`: at
least 32 random bytes; `mailjournal run` creates one when the configured file is missing).
Every key can be overridden from the environment: `MAILJOURNAL_` + the key's path in upper case
with `__` between segments, e.g. `MAILJOURNAL_KAFKA__BOOTSTRAP_SERVERS=broker1:9092`; the value
is read as a TOML value when it parses as one (numbers, booleans, arrays), else as a string; an
error about such a value names the variable. Relative file paths are relative to the config file.
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return " / ".join(json.dumps(a) for a in typing.get_args(annotation))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(annotation))}]"
    if annotation is type(None):
        return "none"
    name = getattr(annotation, "__name__", str(annotation))
    return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(name, name)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    try:
        return "`" + json.dumps(value, default=str) + "`"
    except TypeError:
        return f"`{value}`"


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for cand in (annotation, *typing.get_args(annotation)):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
        if typing.get_origin(cand) is list:
            inner = typing.get_args(cand)[0]
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _section(model: type[BaseModel], path: str, out: list[str]) -> None:
    rows = []
    nested = []
    for name, field in model.model_fields.items():
        sub = _submodel(field.annotation)
        if sub is not None:
            is_list = typing.get_origin(field.annotation) is list
            nested.append((f"{path}.{name}" if path else name, sub, is_list))
            continue
        desc = (field.description or "").replace("\n", " ")
        rows.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
    if rows:
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        out.append(f"\n## `[{path}]`\n")
        if doc:
            out.append(doc + "\n")
        out.append("| key | type | default | meaning |\n|---|---|---|---|")
        out.extend(rows)
    for sub_path, sub, is_list in nested:
        _section(sub, f"[{sub_path}]" if is_list else sub_path, out)


def render() -> str:
    out = [HEADER]
    _section(Config, "", out)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
