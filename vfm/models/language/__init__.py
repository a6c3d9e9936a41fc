"""Language models used as text towers (and, later, as decoders)."""
