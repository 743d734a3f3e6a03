"""The suite registry (after lm-evaluation-harness's task registry): suites register by name and configs
refer to them by that name. Importing this package registers the built-in suites (`harmgate suites list`)."""

from evals.suites.base import (EvalItem, Loaded, Suite, SuiteConfigError, SuiteContext, SuiteResult, get_suite,
                               register_suite, registered_suites)
from evals.suites import refusal as _refusal  # noqa: F401  harmful_compliance, over_refusal, advbench/xstest
from evals.suites import toxicity as _toxicity  # noqa: F401  toxicity_rtp, toxicity_bold
from evals.suites import preference as _preference  # noqa: F401  hh_preference
from evals.suites import helpfulness as _helpfulness  # noqa: F401  helpfulness
from evals.suites import bias as _bias  # noqa: F401  bias_crows_pairs, bias_bbq, bias_winobias
from evals.suites import feedback as _feedback  # noqa: F401  feedback_heldout (production feedback)
from evals.suites import attacks as _attacks  # noqa: F401  attack_robustness (jailbreaks, encodings, multi-turn)
from evals.suites import capability as _capability  # noqa: F401  capability (lm-eval standard tasks)

__all__ = ["EvalItem", "Loaded", "Suite", "SuiteConfigError", "SuiteContext", "SuiteResult", "get_suite",
           "register_suite", "registered_suites"]
