"""The hardware-neutral core: contracts, plugins, scenarios, runner, results."""
