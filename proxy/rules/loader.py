"""Loading rule files: YAML -> JSON-schema validation -> semantic checks -> `RuleSet`.

Every problem is reported with the file and line of the key or value to fix, and all problems
of all files are reported at once (a DBA fixing a file should not play whack-a-mole). To know
lines, the YAML is composed into PyYAML's node tree first and the Python data constructed from
that same tree, so any path into the data (a jsonschema error path, a semantic check's path)
can be mapped back to a mark.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import yaml

from proxy.rules.model import (
    DEFAULT_SEARCH_PATH,
    RuleError,
    RuleProblem,
    RuleSet,
    TableRule,
)
from proxy.rules.protected import Policy, Strategy
from proxy.sqlnames import parse_identifier as fold_identifier
from proxy.sqlnames import split_identifiers

if TYPE_CHECKING:
    import jsonschema

# shipped inside the package (rules/optimist-rules.schema.json links here for editors)
SCHEMA_PATH = Path(__file__).resolve().parent / "optimist-rules.schema.json"

Path_ = tuple[Any, ...]


# --- YAML ------------------------------------------------------------------------------


class _RuleYamlLoader(yaml.SafeLoader):
    """SafeLoader whose booleans are only true/false (YAML 1.2), so that `mode: off` means
    the string 'off' and not False, as YAML 1.1's on/off/yes/no rule would have it."""


_RuleYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RuleYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass
class _Marks:
    """Path into the data -> (line, column) of the key and of the value, 1-based."""

    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def value(self, path: Path_) -> tuple[int, int] | None:
        # the nearest enclosing node that exists: a missing setting points at its table
        for cut in range(len(path), -1, -1):
            found = self.values.get(tuple(path[:cut]))
            if found:
                return found
        return None

    def key(self, path: Path_) -> tuple[int, int] | None:
        return self.keys.get(tuple(path)) or self.value(path)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _index_nodes(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Path_,
    marks: _Marks,
    dup: list[tuple[Path_, Any]],
) -> None:
    marks.values[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            # the key as the data will hold it (`1:` is 1, `null:` is None), so paths from
            # jsonschema errors find their mark
            key = loader.construct_object(key_node)
            child = path + (key,)
            if key in seen:
                dup.append((child, key))
            seen.add(key)
            marks.keys[child] = _mark(key_node)
            _index_nodes(loader, value_node, child, marks, dup)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_nodes(loader, item, path + (i,), marks, dup)


@dataclass
class _File:
    name: str
    text: str
    data: Any = None
    marks: _Marks = field(default_factory=_Marks)
    problems: list[RuleProblem] = field(default_factory=list)
    # data paths that have a problem: later checks skip them instead of piling on
    bad_paths: set[Path_] = field(default_factory=set)

    def problem(self, path: Path_, message: str, *, at_key: bool = False) -> None:
        self.bad_paths.add(tuple(path))
        where = self.marks.key(path) if at_key else self.marks.value(path)
        key = self.marks.keys.get(tuple(path))
        if key and where and where[0] != key[0]:
            # a block list/mapping starts on the line after its key: the key is what a
            # reader looks for ("tables must be a list" -> the `tables:` line)
            where = key
        line, column = where if where else (None, None)
        self.problems.append(RuleProblem(self.name, line, column, message))


def _parse(f: _File) -> bool:
    try:
        loader = _RuleYamlLoader(f.text)
        try:
            node = loader.get_single_node()
            duplicates: list[tuple[Path_, Any]] = []
            if node is not None:
                _index_nodes(loader, node, (), f.marks, duplicates)
                f.data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        # "while parsing a flow sequence ... expected ']'": the problem is often found at the
        # end of the file; where the unfinished construct started is what needs fixing
        mark = exc.context_mark or exc.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        if exc.context_mark and exc.problem_mark and exc.problem_mark.line != exc.context_mark.line:
            what += f" (at line {exc.problem_mark.line + 1})"
        f.problems.append(RuleProblem(f.name, line, column, f"YAML syntax: {what}"))
        return False
    except yaml.YAMLError as exc:
        f.problems.append(RuleProblem(f.name, None, None, f"YAML syntax: {exc}"))
        return False
    for path, key in duplicates:
        # YAML keeps the last one silently; a DBA editing the first would wonder why
        f.problem(path, f"{key!r} is set twice in the same mapping; keep one", at_key=True)
    if f.data is None:
        f.problems.append(
            RuleProblem(
                f.name, None, None, "the file is empty; it needs `version: 1` and `tables:`"
            )
        )
        return False
    return True


# --- JSON schema -----------------------------------------------------------------------


@lru_cache(maxsize=1)
def rules_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return schema


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    import jsonschema  # imported late: only loading rules needs it

    schema = rules_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _allowed_keys(path: Path_) -> list[str]:
    schema = rules_schema()
    settings = list(schema["$defs"]["settings"]["properties"])
    if path == ():
        return list(schema["properties"])
    if path == ("defaults",):
        return settings
    return ["table", *settings]


def _did_you_mean(word: Any, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _setting_name(path: Path_) -> str:
    """('tables', 2, 'columns', 'x') -> 'columns.x': the table's line is given separately."""
    rest = path[2:] if path[:1] == ("tables",) and len(path) >= 2 else path
    out = ""
    for part in rest:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or ("the table entry" if path[:1] == ("tables",) else "the file")


_TYPE_WORDS = {
    "object": "a mapping (key: value lines)",
    "array": "a list",
    "string": "a string",
    "boolean": "true or false",
    "integer": "a whole number",
}


def _schema_problems(f: _File) -> None:
    seen: set[tuple[Path_, str]] = set()
    for error in sorted(_validator().iter_errors(f.data), key=lambda e: list(map(str, e.path))):
        path = tuple(error.absolute_path)
        kind = error.validator
        if kind in ("additionalProperties", "unevaluatedProperties"):
            allowed = _allowed_keys(path)
            for key in error.instance:
                if key not in allowed and ((path + (key,)), "unknown") not in seen:
                    seen.add((path + (key,), "unknown"))
                    what = "setting" if path else "top-level key"
                    hint = _did_you_mean(key, allowed) or f"; allowed: {', '.join(allowed)}"
                    f.problem(path + (key,), f"unknown {what} {key!r}{hint}", at_key=True)
            continue
        if "propertyNames" in error.relative_schema_path:
            # a mapping key that is not text (YAML reads `1:` or `null:` as a number/null)
            f.problem(
                path + (error.instance,),
                f"{error.instance!r} in {_setting_name(path)} "
                "is not a column name; quote it as text",
                at_key=True,
            )
            continue
        if (path, kind) in seen:
            continue
        seen.add((path, kind))
        name = _setting_name(path)
        custom = error.schema.get("errorMessage") if isinstance(error.schema, dict) else None
        if kind == "required":
            for missing in error.validator_value:
                if missing not in error.instance:
                    f.problem(path, f"{name} is missing required key {missing!r}")
        elif kind == "enum":
            options = [str(o) for o in error.validator_value]
            label = (
                f"policy of column {path[-1]!r}"
                if len(path) >= 2 and path[-2] == "columns"
                else name
            )
            f.problem(
                path,
                f"{label} must be one of {', '.join(options)}, not "
                f"{error.instance!r}{_did_you_mean(error.instance, options)}",
            )
        elif custom:
            f.problem(path, f"{name} {custom}")
        elif kind == "type":
            f.problem(
                path,
                f"{name} must be {_TYPE_WORDS.get(error.validator_value, error.validator_value)}"
                f", not {error.instance!r}",
            )
        else:
            f.problem(path, f"{name}: {error.message}")


# --- semantic checks and building rules ----------------------------------------------

_STRATEGY_ONLY = {
    "version_column": "version",
    "bump": "version",
    "check": "columns",
    "columns": "columns",
    "groups": "columns",
}


def _table_entries(f: _File) -> Iterator[tuple[int, dict[str, Any]]]:
    tables = f.data.get("tables") if isinstance(f.data, dict) else None
    for i, entry in enumerate(tables if isinstance(tables, list) else []):
        if isinstance(entry, dict):
            yield i, entry


def _has_problem_under(bad_paths: set[Path_], prefix: Path_) -> bool:
    return any(p[: len(prefix)] == prefix for p in bad_paths)


def _build_rule(
    f: _File, i: int, entry: dict[str, Any], defaults: dict[str, Any], search_path: tuple[str, ...]
) -> TableRule | None:
    """Merge defaults into one entry, fold names, check what the schema cannot express."""
    base: Path_ = ("tables", i)
    before = len(f.problems)

    def origin(setting: str) -> Path_:
        return base + (setting,) if setting in entry else ("defaults", setting)

    def get(setting: str, default: Any = None) -> Any:
        return entry.get(setting, defaults.get(setting, default))

    def fold(value: str, path: Path_) -> str | None:
        try:
            return fold_identifier(value)
        except ValueError as exc:
            f.problem(path, str(exc))
            return None

    try:
        parts = split_identifiers(entry["table"])
    except ValueError as exc:
        f.problem(base + ("table",), str(exc))
        return None
    if len(parts) > 2:
        f.problem(
            base + ("table",),
            f"table {entry['table']!r} has too many dots: write schema.name or name",
        )
        return None
    schema, name = parts if len(parts) == 2 else (search_path[0], parts[0])

    strategy: Strategy = get("strategy") or ("version" if get("version_column") else "columns")
    for setting, only_for in _STRATEGY_ONLY.items():
        # a default that does not apply to this table's strategy is simply not used
        if setting in entry and strategy != only_for:
            f.problem(
                base + (setting,),
                f"{setting} only applies to strategy {only_for}; "
                f"this table uses strategy {strategy}",
                at_key=True,
            )

    key: tuple[str, ...] | None = None
    raw_key = get("key")
    if raw_key is not None:
        raw_list = [raw_key] if isinstance(raw_key, str) else raw_key
        folded = []
        for j, col in enumerate(raw_list):
            path = origin("key") + ((j,) if isinstance(raw_key, list) else ())
            if isinstance(raw_key, str) and "," in col:
                f.problem(
                    path,
                    f"key {col!r} is not a column name; for several columns write a list: [{col}]",
                )
                continue
            c = fold(col, path)
            if c is not None and c in folded:
                f.problem(path, f"key column {c!r} is listed twice")
            elif c is not None:
                folded.append(c)
        key = tuple(folded)

    version_column = None
    if strategy == "version":
        raw_vc = get("version_column")
        if raw_vc is None:
            f.problem(
                base,
                "strategy version needs version_column: the column bumped on every "
                "update (or use strategy columns)",
            )
        else:
            version_column = fold(raw_vc, origin("version_column"))
            if key and version_column in key:
                f.problem(
                    origin("key"),
                    f"version column {version_column!r} cannot also be part of the key",
                )

    policies: dict[str, Policy] = {}
    groups: list[tuple[str, ...]] = []
    if strategy == "columns":
        for col, policy in (get("columns") or {}).items():
            path = origin("columns") + (col,)
            c = fold(col, path)
            if c is None:
                continue
            if c in policies:
                f.problem(
                    path,
                    f"column {c!r} has two policies (names fold to lower case unless quoted)",
                    at_key=True,
                )
            elif key and c in key:
                f.problem(
                    path,
                    f"column {c!r} is part of the key; key columns are never "
                    "checked, remove it from columns",
                    at_key=True,
                )
            policies[c] = policy
        for g, group in enumerate(get("groups") or []):
            members: list[str] = []
            for j, col in enumerate(group):
                path = origin("groups") + (g, j)
                c = fold(col, path)
                if c is None:
                    continue
                if c in members:
                    f.problem(path, f"column {c!r} appears twice in this group")
                elif key and c in key:
                    f.problem(
                        path,
                        f"column {c!r} is part of the key; key columns are never "
                        "checked, so it cannot be in a group",
                    )
                else:
                    members.append(c)
            groups.append(tuple(members))

    if len(f.problems) > before:
        return None
    line = f.marks.value(base)
    return TableRule(
        schema=schema,
        name=name,
        schema_explicit=len(parts) == 2,
        strategy=strategy,
        key=key,
        version_column=version_column,
        bump=get("bump", "increment") if strategy == "version" else "increment",
        check=get("check", "changed") if strategy == "columns" else "changed",
        columns=MappingProxyType(policies),
        groups=tuple(groups),
        sparse_update=get("sparse_update", False),
        mode=get("mode", "enforce"),
        unknown_original=get("unknown_original", "allow"),
        unverified=get("unverified", "allow"),
        scope=get("scope", "session"),
        notify=get("notify"),
        source_file=f.name,
        source_line=line[0] if line else 0,
    )


def _search_path_of(f: _File, bad_paths: set[Path_]) -> tuple[str, ...] | None:
    raw = f.data.get("search_path") if isinstance(f.data, dict) else None
    if raw is None or _has_problem_under(bad_paths, ("search_path",)):
        return None
    out = []
    for j, schema in enumerate(raw):
        try:
            out.append(fold_identifier(schema))
        except ValueError as exc:
            f.problem(("search_path", j), str(exc))
    return tuple(out)


def _expand(paths: Sequence[str | Path]) -> tuple[list[Path], list[RuleProblem]]:
    files, problems = [], []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml") and x.is_file())
            if not found:
                problems.append(
                    RuleProblem(str(p), None, None, "directory has no *.yaml or *.yml rule files")
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            problems.append(RuleProblem(str(p), None, None, "no such file or directory"))
    return files, problems


def load_rules(paths: Sequence[str | Path]) -> RuleSet:
    """Load and check rule files (a directory contributes its *.yaml/*.yml, sorted).

    Raises RuleError listing every problem found in every file.
    """
    file_paths, problems = _expand(paths)
    files: list[_File] = []
    for p in file_paths:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(RuleProblem(str(p), None, None, f"cannot read: {exc}"))
            continue
        files.append(_File(str(p), text))

    parsed: list[tuple[_File, set[Path_]]] = []
    for f in files:
        if _parse(f):
            _schema_problems(f)
            parsed.append((f, set(f.bad_paths)))

    # search_path is one setting of the whole rule set: files may repeat it, not contradict it
    search_path: tuple[str, ...] | None = None
    search_path_from = ""
    for f, bad in parsed:
        sp = _search_path_of(f, bad)
        if sp is None:
            continue
        if search_path is None:
            search_path, search_path_from = sp, f.name
        elif sp != search_path:
            f.problem(
                ("search_path",),
                f"search_path {list(sp)} contradicts "
                f"{list(search_path)} set in {search_path_from}; all files share one",
            )
    search_path = search_path or DEFAULT_SEARCH_PATH

    rules: list[TableRule] = []
    seen: dict[tuple[str, str], TableRule] = {}
    for f, bad in parsed:
        defaults = f.data.get("defaults") if isinstance(f.data, dict) else None
        if not isinstance(defaults, dict) or _has_problem_under(bad, ("defaults",)):
            # broken defaults would cause a cascade of problems in every table: report once
            if defaults is not None:
                continue
            defaults = {}
        for i, entry in _table_entries(f):
            if _has_problem_under(bad, ("tables", i)):
                continue
            rule = _build_rule(f, i, entry, defaults, search_path)
            if rule is None:
                continue
            other = seen.get((rule.schema, rule.name))
            if other is not None:
                f.problem(
                    ("tables", i, "table"),
                    f"table {rule.qualified_name} already has a "
                    f"rule at {other.where}; one rule per table",
                )
                continue
            seen[(rule.schema, rule.name)] = rule
            rules.append(rule)

    for f in files:
        problems.extend(sorted(f.problems, key=lambda p: (p.line or 0, p.column or 0)))
    if problems:
        raise RuleError(problems)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.text.encode() + b"\0")
    return RuleSet(
        rules=tuple(rules),
        search_path=search_path,
        version=digest.hexdigest()[:12],
        loaded_at=time.time(),
        sources=tuple(f.name for f in files),
    )
