"""Seed labels from class activation maps."""
