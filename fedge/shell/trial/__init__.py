"""Field trials: every listed strategy on the same fleet, split and seeds, with a report (``fedge trial``)."""
