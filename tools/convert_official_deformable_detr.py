#!/usr/bin/env python
"""Convert an official Deformable DETR checkpoint for vfm: python tools/convert_official_deformable_detr.py IN.pth
OUT.safetensors [--ann-file instances_val2017.json]; then train with load_from=OUT or evaluate with tools/eval.py."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from vfm.models.detection.conversion import converter_main
from vfm.models.detection.official_keys import official_deformable_detr


def main(argv: Sequence[str] | None = None) -> int:
    """Convert SRC to DST; a `VfmError` is one line on stderr with exit status 2."""
    return converter_main(argv, "convert_official_deformable_detr.py", __doc__.split(":")[0] + ".",
                          "checkpoint in the fundamentalvision/Deformable-DETR layout (.pth)",
                          official_deformable_detr)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
