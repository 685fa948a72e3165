"""Graph assembly: options, stage plumbing, ledger and the ``build_*`` functions of each job."""
