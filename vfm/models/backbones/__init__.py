"""Backbones: timm models by name, plus vfm's own (registered in BACKBONES)."""
