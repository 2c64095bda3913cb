"""glta_gllm."""
