"""Looking at a model: the linear probe (:mod:`~fastflow.analysis.probe`), image grids of samples,
switches, interpolations and reconstructions (:mod:`~fastflow.analysis.visualize`), and the PNG
bits/dim baseline (:mod:`~fastflow.analysis.baseline`)."""
