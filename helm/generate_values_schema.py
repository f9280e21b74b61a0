"""Write helm/lang1-ops/values.schema.json: the chart's own values plus lang1ops.settings.Settings.

    .venv/bin/python helm/generate_values_schema.py          # regenerate
    .venv/bin/python helm/generate_values_schema.py --check  # exit 1 if the committed file is stale

Three sources, one output:
- helm/values.schema.base.json: types and constraints of the chart's own values (hand-written);
- helm/lang1-ops/values.yaml: each value's `# -- ` comment becomes its schema `description`, so
  the documentation is written once;
- `Settings.model_json_schema()`: the `settings` block, the Serve application's `args`. Its
  objects get `additionalProperties: false`: Settings ignores unknown keys (environment
  variables of other tools share its prefix), but in a values file an unknown key is a typo.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

HELM_DIR = Path(__file__).resolve().parent
CHART_DIR = HELM_DIR / "lang1-ops"
BASE_SCHEMA = HELM_DIR / "values.schema.base.json"
VALUES = CHART_DIR / "values.yaml"
OUTPUT = CHART_DIR / "values.schema.json"

_KEY = re.compile(r"^(?P<indent>\s*)(?P<dash>-\s+)?(?P<key>[A-Za-z_][\w.-]*):(\s|$)")
_DOC = re.compile(r"^\s*#\s--\s(?P<text>.*)$")
_CONTINUATION = re.compile(r"^\s*#\s(?P<text>.*)$")


def value_comments(values_yaml: str) -> dict[tuple[str, ...], str]:
    """`# -- ` comments of values.yaml by key path; list items are the path element "[]".

    A comment is the `# -- ` line right above a key plus any `# ` lines that follow it.
    Only block-style YAML is understood (what values.yaml uses): keys at growing indents,
    lists of mappings written `- key: value`.
    """
    comments: dict[tuple[str, ...], str] = {}
    stack: list[tuple[int, str]] = []  # (indent of the key, path element)
    pending: list[str] | None = None
    for line in values_yaml.splitlines():
        if doc := _DOC.match(line):
            pending = [doc.group("text").strip()]
            continue
        if pending is not None and (more := _CONTINUATION.match(line)):
            pending.append(more.group("text").strip())
            continue
        match = _KEY.match(line)
        if not match:
            if line.strip() and not line.lstrip().startswith("#"):
                pending = None
            continue
        indent = len(match.group("indent"))
        if match.group("dash"):
            # "- key:" opens a list item: the list's key sits at a smaller indent
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, "[]"))
            indent += len(match.group("dash"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group("key")))
        path = tuple(element for _, element in stack)
        if pending is not None:
            # the comment above "- name: cpu" describes the list item, not its first key
            comments[path[:-1] if match.group("dash") else path] = " ".join(pending)
        pending = None
    return comments


def _describe(schema: dict, path: tuple[str, ...], comments: dict[tuple[str, ...], str]) -> None:
    if path in comments:
        schema.setdefault("description", comments[path])
    for key, sub in schema.get("properties", {}).items():
        if key != "settings" or path:
            _describe(sub, (*path, key), comments)
    if isinstance(schema.get("items"), dict):
        _describe(schema["items"], (*path, "[]"), comments)


def _closed(schema: object) -> None:
    """additionalProperties false on every object schema that lists properties."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            _closed(value)
    elif isinstance(schema, list):
        for value in schema:
            _closed(value)


def settings_schema() -> dict:
    sys.path.insert(0, str(HELM_DIR.parent))
    from lang1ops.settings import Settings

    return Settings.model_json_schema()


def build_schema() -> dict:
    schema = json.loads(BASE_SCHEMA.read_text())
    comments = value_comments(VALUES.read_text())
    _describe(schema, (), comments)
    settings = copy.deepcopy(settings_schema())
    _closed(settings)
    defs = settings.pop("$defs", {})
    clash = set(defs) & set(schema["$defs"])
    if clash:
        raise SystemExit(f"Settings model names clash with the chart's schema $defs: {sorted(clash)}")
    # $refs of the settings schema point at "#/$defs/...": hoist its $defs to the document root
    schema["$defs"].update(defs)
    settings["description"] = comments.get(("settings",), settings.get("description", ""))
    schema["properties"]["settings"] = settings
    return schema


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Exit 1 if values.schema.json is not up to date.")
    args = parser.parse_args(argv)
    text = render(build_schema())
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(HELM_DIR.parent)} is stale: run python helm/generate_values_schema.py",
                  file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(HELM_DIR.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
