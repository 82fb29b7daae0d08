"""Processors run by phasegate `command` processors (see example_processor.py)."""
