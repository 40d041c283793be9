"""spikeprune.search"""
