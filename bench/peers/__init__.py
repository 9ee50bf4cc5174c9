"""Peer servers the serving benchmark measures ours against (the simple ways of serving a model)."""
