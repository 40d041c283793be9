"""Results of a search (private; the public names are in ``spikeprune``): Pareto front and
hypervolume, plots, the HTML report, trial tables and export."""
