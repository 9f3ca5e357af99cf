"""Fault injection: seeded SIGKILLs of the real CLI, and what must hold after the next apply."""
