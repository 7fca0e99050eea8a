"""Fault-injection tests: kills, signals, bad input, untrusted files, shared files."""
