"""Data: sources, formats, tokenization with loss masks, collation."""
