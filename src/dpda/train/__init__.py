"""Training: dpda train."""
