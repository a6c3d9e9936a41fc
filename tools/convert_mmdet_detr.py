#!/usr/bin/env python
"""Convert an mmdetection 3.x DETR or Deformable DETR checkpoint for vfm: python tools/convert_mmdet_detr.py
IN.pth OUT.safetensors [--ann-file ANN.json]; then train with load_from=OUT or evaluate with tools/eval.py."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from vfm.models.detection.conversion import converter_main
from vfm.models.detection.mmdet_keys import mmdet_detection


def main(argv: Sequence[str] | None = None) -> int:
    """Convert SRC to DST; a `VfmError` is one line on stderr with exit status 2."""
    return converter_main(argv, "convert_mmdet_detr.py", __doc__.split(":")[0] + ".",
                          "mmdetection 3.x checkpoint (.pth with 'state_dict' and 'meta')", mmdet_detection)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
