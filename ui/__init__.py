"""Gradio front end: one module per tab, each calling only `core`."""
