"""Runtimes that execute compiled graphs and exchange tensors with torch."""
