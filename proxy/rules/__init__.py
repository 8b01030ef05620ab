"""Rules: which tables optimist protects and how (see rules/README.md for the file format).

load_rules(paths) -> RuleSet            # YAML files -> checked rules, or RuleError
resolve(ruleset, catalog) -> ({oid: ProtectedTable}, [Problem])
"""

from proxy.rules.loader import load_rules
from proxy.rules.model import RuleError, RuleProblem, RuleSet, TableRule
from proxy.rules.protected import ProtectedTable
from proxy.rules.resolve import Problem, resolve, wanted_tables

__all__ = [
    "load_rules",
    "RuleError",
    "RuleProblem",
    "RuleSet",
    "TableRule",
    "ProtectedTable",
    "Problem",
    "resolve",
    "wanted_tables",
]
