"""Backend ``gluon``: a hand-scheduled block-sparse attention forward for Hopper in Gluon."""
