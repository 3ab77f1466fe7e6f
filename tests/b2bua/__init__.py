"""The B2BUA's call paths, driven in memory (issue 9)."""
