"""glta_graph."""
