"""Auxiliary theory tools (stability monitors, peer-review mechanisms); the core never imports them."""
