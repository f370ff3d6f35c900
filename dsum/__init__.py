"""dsum: PyTorch Lightning research codebase for Korean dialogue summarization."""

__version__ = "0.1.0"
