"""Training a run: the loop (:func:`fastflow.train.loop.train`), checkpoints, the learning-rate schedule,
multi-process (DDP) helpers, the metrics log, the ``train`` config block and bits/dim evaluation.

Loading a trained run and the commands that use it live in :mod:`fastflow.inference`; the probe,
image grids and the PNG baseline in :mod:`fastflow.analysis`; the demo in :mod:`fastflow.demo`.
"""
