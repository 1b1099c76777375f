"""Image decoding and preprocessing shared by the service and the training code."""
