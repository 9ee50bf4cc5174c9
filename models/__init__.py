"""The DIGLM's math, shared by training and serving: flows, GLM heads, the hybrid model, the gate
and the checkpoint format. No training, web or plotting code lives here."""
