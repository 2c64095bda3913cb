"""glta_align."""
