"""Training and evaluation entry points for cosjax (python -m train.main)."""
