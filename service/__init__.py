"""FastAPI service: loads a DIGLM checkpoint and answers predictions with log p(x) and the gate's
decision per instance, over the KServe v1 and Open Inference Protocol (v2) paths."""
