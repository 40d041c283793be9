"""spikeprune._spaces"""
