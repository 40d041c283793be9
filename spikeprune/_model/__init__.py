"""The spiking BERT (private; the public names are in ``spikeprune``): config, model, checkpoint
format, GLUE data and metrics, evaluation, compression operators and operation counting."""
