"""Model plugins (``mlpi.models`` entry points): one module per model with its ModelSpec."""
