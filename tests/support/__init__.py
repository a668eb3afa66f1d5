"""Helpers shared by the test modules: plain functions and constants, no tests and no fixtures.

The fixtures live in ``tests/conftest.py`` (and a folder's own ``conftest.py``); a test module
imports from here, never from another test module.
"""
