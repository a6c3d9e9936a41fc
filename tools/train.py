#!/usr/bin/env python
"""Train from a YAML config: python tools/train.py CONFIG [key=value ...] [--print-config] [--dry-run]."""

import sys

from vfm.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
