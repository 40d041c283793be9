"""spikeprune.results"""
