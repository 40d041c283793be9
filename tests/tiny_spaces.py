"""Search-space text for the tiny prepared base (2 layers of 2 heads, FFN 64, T = 2), shared by the
search and reliability tests so the knobs they search are defined once."""

#: Every knob of the tiny student, searched coarsely; tests append their own objectives and options.
TINY_KNOBS = """
heads: {per_layer: true, min: 1, max: 2}
neurons: {per_layer: true, min: 32, max: 64, step: 32}
timesteps: {min: 1, max: 2}
weight_bits: {choices: [4, 32]}
objectives: [{name: metric, direction: maximize}, {name: sops, direction: minimize}]
"""
