"""mowis network, trainer and evaluation: the two-stream CondInst/BoxInst model."""
