"""Plugins: discovery through entry points, plugins.toml, typed backend options, what is installed."""
