"""Loss recipes: the original system's imbalance-handling variants on the GRU config.

Each module's `get_config(arg)` starts from `configs.gru.get_config(arg)` (so
`configs/recipes/<recipe>.py:quick` works) and changes only the loss settings.
"""
