"""spikeprune.spaces"""
