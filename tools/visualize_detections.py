#!/usr/bin/env python
"""Draw a detector's predictions: python tools/visualize_detections.py CONFIG CKPT IMAGE_OR_DIR --out vis/."""

import sys

from vfm.cli import visualize_main

if __name__ == "__main__":
    sys.exit(visualize_main())
