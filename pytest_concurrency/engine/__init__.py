"""Pure foundations: settings, seeds, outcomes, reports, cores, leaks, the worker context.

No module here imports pytest.
"""
