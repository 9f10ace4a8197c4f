"""gDDIM samplers for general linear diffusions, with Lightning training."""
