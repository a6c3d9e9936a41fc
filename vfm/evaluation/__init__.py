"""How results are judged: evaluators that accumulate predictions and compute metrics."""
