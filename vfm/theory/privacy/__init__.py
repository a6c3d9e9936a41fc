"""f-DP privacy accounting of the last iterate by shifted interpolation, and DP training of a convex head."""
