#!/usr/bin/env python
"""Convert an official DETR checkpoint (facebookresearch/detr: R50, R101, DC5) for vfm: python
tools/convert_official_detr.py IN.pth OUT.safetensors [--ann-file instances_val2017.json]; then train with
load_from=OUT or evaluate with tools/eval.py."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from vfm.models.detection.conversion import converter_main
from vfm.models.detection.official_detr_keys import official_detr


def main(argv: Sequence[str] | None = None) -> int:
    """Convert SRC to DST; a `VfmError` is one line on stderr with exit status 2."""
    return converter_main(argv, "convert_official_detr.py", __doc__.split(":")[0] + ".",
                          "checkpoint in the facebookresearch/detr layout (.pth)", official_detr)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
