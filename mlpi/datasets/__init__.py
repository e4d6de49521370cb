"""Built-in dataset plugins (``mlpi.datasets`` entry points)."""
