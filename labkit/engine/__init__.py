"""The engine: what dockerd/libpod are to runc.

Pure-logic foundations live here (status model, names, records on disk,
json-file logs, restart policies); the wiring to `labkit.runtime` and the
monitor builds on them.
"""
