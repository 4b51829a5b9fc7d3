"""The project's own transformer architectures, registered with transformers' Auto classes."""
