"""Sweeps: many ``mlpi run`` cells from one matrix, recorded so a stopped sweep resumes.

``matrix`` turns flags or a TOML file into cells and checks them before anything runs;
``state`` keeps ``<results>/sweeps/<sweep-id>/sweep.json``; ``driver`` runs the cells that
are left through an executor: ``local`` (one after another in this process) or
``ray_executor`` (each cell a Ray task on a node that has its device).
"""
