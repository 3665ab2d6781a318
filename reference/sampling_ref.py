"""Sampling processors and the generation loop of the engine, in NumPy (filled in with the engine)."""


def make_fixtures(root, w, cfg):
    pass
