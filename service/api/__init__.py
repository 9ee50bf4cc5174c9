"""HTTP routers: ``v1`` (KServe v1 predict) and ``v2`` (Open Inference Protocol, health, metadata)."""
