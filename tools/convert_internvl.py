#!/usr/bin/env python
"""Convert an official InternVL-C/G checkpoint for vfm: python tools/convert_internvl.py SRC OUT.safetensors
[--config-out objective.yaml] [--tokenizer DIR]; then train or evaluate `internvl_stage2` with load_from=OUT."""

import sys

from vfm.models.internvl_conversion import convert_main

if __name__ == "__main__":
    sys.exit(convert_main())
