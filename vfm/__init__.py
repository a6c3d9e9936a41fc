"""vfm: a PyTorch-native framework for training vision foundation models."""
__version__ = "0.1.0"
