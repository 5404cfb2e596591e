"""Image backbones (Keras 3, backend-agnostic) used by the gender classifier."""
