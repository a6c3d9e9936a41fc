#!/usr/bin/env python
"""Evaluate a checkpoint: python tools/eval.py CONFIG CHECKPOINT [key=value ...]."""

import sys

from vfm.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
