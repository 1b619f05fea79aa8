"""Lua sources of the atomic steps (package data read with importlib.resources)."""
