"""Annotate: the sink that joins frames with predictions, tracks faces and draws them."""
