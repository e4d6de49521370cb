"""From runs in the results store to a submission tree MLCommons' checker accepts.

- :mod:`~mlpi.submission.layout`: where each file of a round's tree goes.
- :mod:`~mlpi.submission.runinfo`: what a run recorded that a submission reads (its model's
  rules, its setup, its weights).
- :mod:`~mlpi.submission.select`: which runs fill which (benchmark, scenario), what is
  missing, and why a run cannot be used.
- :mod:`~mlpi.submission.system`: ``systems/<system>.json`` from what the runs recorded plus
  the user's file; never a value made up.
- :mod:`~mlpi.submission.measurements`: ``measurements.json`` from what the runs recorded.
- :mod:`~mlpi.submission.truncate`: the accuracy log cut as ``truncate_accuracy_log.py`` cuts it.
- :mod:`~mlpi.submission.src`: ``src/``, what another person needs to make the runs again.
- :mod:`~mlpi.submission.readme`: each scenario's ``README.md``.
- :mod:`~mlpi.submission.build`: the tree, written whole or not at all.
- :mod:`~mlpi.submission.precheck` and :mod:`~mlpi.submission.check`: what MLCommons' checker
  misses or stops on, then the checker itself, unpatched, from the user's checkout.
"""
