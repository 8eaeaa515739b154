"""Customer value: BG/NBD purchases and Gamma-Gamma spend fitted on sufficient statistics (``clv``), their
simulation (``simulate``), and the Spark aggregation that feeds them (``stats``)."""
