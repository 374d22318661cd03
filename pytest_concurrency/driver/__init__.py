"""Drives a series of runs through a runner: the marker's series, the harness, progress.

No module here imports pytest.
"""
