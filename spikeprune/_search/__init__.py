"""The search service (private; the public names are in ``spikeprune``): settings, the Ray
connection, storage, resume, study setup, the driver loop and the Ray task of one trial."""
