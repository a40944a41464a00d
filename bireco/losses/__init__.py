"""Loss functions on tensors: the chunked token CE of Stage I, InfoNCE and GradCache of Stage II."""
