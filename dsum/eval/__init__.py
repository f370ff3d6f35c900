"""What happens to generated summaries: post-processing, the official-style Korean ROUGE and fidelity metrics,
the inference settings an export carries, and the tools built on them (``score``, ``ensemble``)."""
