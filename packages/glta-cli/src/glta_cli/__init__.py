"""glta_cli."""
