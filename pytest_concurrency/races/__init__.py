"""Race finding: code filter, perturbation, tracked primitives, lock graph, scheduler.

No module here imports pytest.
"""
