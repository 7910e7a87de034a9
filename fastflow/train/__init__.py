"""Training, evaluation and the operations behind the command line.

:func:`fastflow.train.loop.train` trains a run folder; :func:`fastflow.train.rundir.load_run` loads
one back; :mod:`fastflow.train.commands` holds eval / sample / switch / interpolate / reconstruct /
probe.
"""
