"""Evaluation: evaluators, jitted evaluation steps, static potentials and reports."""
