"""The zennit reference now lives in the package, :mod:`xai_helpers.lrp.reference`, so that
notebook 05 can show the comparison; this module keeps the old import path for the tests and
``benchmarks/bench_methods.py``."""

from xai_helpers.lrp.reference import (  # noqa: F401
    TINY,
    AvgPoolRelevance,
    zennit_lrp,
    zennit_ready,
    zennit_ready_lite,
    zennit_ready_resnet,
    zennit_ready_vgg,
    zennit_relevance,
    zennit_rule,
)
