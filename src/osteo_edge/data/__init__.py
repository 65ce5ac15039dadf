"""Dataset scanning, duplicate audit and leakage-safe splits."""
