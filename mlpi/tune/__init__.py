"""Tuning: the settings that give each scenario its best VALID result, as a reusable profile.

``search`` is the Server search (bracket, then bisect); ``trials`` runs each trial as an
ordinary run and labels it; ``state`` keeps ``<tune dir>/tune.json`` so a stopped tune
resumes; ``tuner`` runs the phases (measure, search, latency, confirm); ``driver`` checks
everything, finds or starts the tune in its folder and writes ``profile.json``; ``profile``
is that file's format and how ``mlpi run --profile`` takes it.
"""
