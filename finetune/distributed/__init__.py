"""DeepSpeed configuration and launch helpers."""
