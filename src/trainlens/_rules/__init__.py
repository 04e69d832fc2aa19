"""Built-in rules, one module per symptom, mirroring `recipes/<symptom>.toml`.

Each module is a pluggy plugin with a `trainlens_diagnose(records, catalogue)` hook
implementation: a pure function of what was recorded. Registered in `_plugins.py`.
"""
