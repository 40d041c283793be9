"""Search guidance from the prepared base: what a config will cost (predicted from the base's spike
statistics, without simulating it) and how much each layer and knob hurts the metric (a measured
sensitivity profile), and the sampler that proposes configs from both."""
