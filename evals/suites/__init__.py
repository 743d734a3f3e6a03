"""The suite registry (after lm-evaluation-harness's task registry): suites register by name and configs
refer to them by that name. Importing this package registers the built-in suites."""

from evals.suites.base import EvalItem, Suite, SuiteResult, get_suite, register_suite, registered_suites
from evals.suites import refusal as _refusal  # noqa: F401  (registers advbench_refusal, xstest_over_refusal)

__all__ = ["EvalItem", "Suite", "SuiteResult", "get_suite", "register_suite", "registered_suites"]
