"""What a trial runs (private; the public names are in ``spikeprune``): the prepared base as
trials see it, and the kernel that compresses, evaluates and counts one config."""
