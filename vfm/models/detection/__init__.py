"""Set-prediction detectors: DETR and Deformable DETR, their matcher, losses and post-processing."""
