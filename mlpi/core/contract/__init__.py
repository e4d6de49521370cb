"""The public contract: what backend, dataset and model plugins implement (re-exported by :mod:`mlpi.api`)."""
