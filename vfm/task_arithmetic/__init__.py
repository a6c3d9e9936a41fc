"""Task arithmetic: parameter selection, fine-tuning modes (standard, attention-only, linearized), task vectors."""
