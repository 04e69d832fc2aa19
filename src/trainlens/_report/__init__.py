"""The report stage: what a person reads. drill.md sections, pictures, terminal output.

Each part is a plugin registered in `_plugins.DEFAULT_PLUGINS`, the same way a team's own
report plugin would be.
"""
