"""Spiking BERT: data, metrics, model, training, compression and operation counting."""
