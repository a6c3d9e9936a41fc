"""What flows in: datasets, transforms, samplers and loaders."""
