"""Test-only models and artifacts shared by tests across the tree."""
