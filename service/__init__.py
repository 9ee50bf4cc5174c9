"""The service: loads DIGLM checkpoints and answers predictions with log p(x) and the gate's
decision per instance, over KServe v1 and the Open Inference Protocol (v2) over REST and gRPC."""
