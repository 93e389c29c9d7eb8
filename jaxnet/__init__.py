"""jaxnet: the PyTorch quickstart classifier in JAX/Flax, and a harness proving parity with torch."""
