"""Entry points: each job module has ``run(argv=None)``; ``jobs.cli`` is the ``counterfactory`` command."""
