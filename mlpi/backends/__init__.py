"""Built-in backends, registered through the same entry points a third party uses."""
