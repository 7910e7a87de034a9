"""Using a trained run: :func:`fastflow.inference.rundir.load_run` loads one from its folder, and
:mod:`fastflow.inference.commands` holds the operations behind ``fastflow eval / sample / switch /
interpolate / reconstruct / probe``."""
