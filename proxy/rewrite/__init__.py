"""SQL lexing/splitting/classification (lexer), write planning with sqlglot (planner),
rendering (render) and the plan cache (cache)."""

from proxy.rewrite.cache import RewriteCache
from proxy.rewrite.lexer import (
    MUST_PARSE,
    Statement,
    classify,
    literal_text,
    normalize,
    quote_literal,
    split_statements,
    write_target,
)
from proxy.rewrite.planner import (
    InsertPlan,
    KeyRef,
    Unverified,
    WritePlan,
    plan_insert,
    plan_write,
    written_tables,
)
from proxy.rewrite.render import RenderedSql

__all__ = [
    "MUST_PARSE",
    "InsertPlan",
    "KeyRef",
    "RenderedSql",
    "RewriteCache",
    "Statement",
    "Unverified",
    "WritePlan",
    "classify",
    "literal_text",
    "normalize",
    "plan_insert",
    "plan_write",
    "quote_literal",
    "split_statements",
    "write_target",
    "written_tables",
]
