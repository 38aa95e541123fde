"""The trainer core: train state, the update builder, the compiled runner, RNG streams.

Nothing here knows an algorithm, a callback or a file format.
"""
